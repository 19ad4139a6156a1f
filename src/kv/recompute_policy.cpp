// recompute:W — the sliding window with re-computation baseline (StreamingLLM's oracle):
// for every token n the last W tokens are encoded again from an empty cache, at positions
// 0..W-1, so no state survives from token to token. O(W) model work per token.
#include <fmt/core.h>

#include <limits>

#include "policies.h"
#include "spillway/core/error.h"

namespace spillway::kv {

namespace {

class RecomputePolicy final : public Policy {
 public:
  RecomputePolicy(int64_t window, const PolicyOptions& opts, const PolicyLimits& limits)
      : Policy(opts, limits), window_(window) {}

  std::string spec() const override {
    return fmt::format("recompute:{}{}", window_, options_suffix(options_));
  }
  int64_t n_slots() const override { return window_; }
  std::optional<int64_t> capacity() const override { return window_; }

  std::optional<int64_t> replay_from(int64_t n) const override {
    return std::max<int64_t>(0, n - window_ + 1);
  }

  std::vector<int64_t> slot_contents() const override {
    return dense_slot_contents(window_, n_planned());
  }
  std::unique_ptr<Policy> clone() const override {
    return std::make_unique<RecomputePolicy>(*this);
  }

 protected:
  // Plans the replayed sub-stream: its tokens sit in slots 0..W-1 at positions 0..W-1
  // (absolute mode makes no difference: only distances enter the scores).
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override {
    if (n0 + count > window_)
      throw InvalidArgument(
          fmt::format("policy '{}': plan({}, {}) must replay at most {} tokens from an empty cache",
                      spec(), n0, count, window_));
    append_dense_plan(n0, count, out);
  }

 private:
  int64_t window_;
};

}  // namespace

std::unique_ptr<Policy> make_recompute_policy(std::string_view args, const PolicyOptions& opts,
                                              const PolicyLimits& limits) {
  const int64_t w = parse_count(args, 1, std::numeric_limits<int32_t>::max() / 2, "W (window)",
                                fmt::format("recompute:{}", args));
  return std::make_unique<RecomputePolicy>(w, opts, limits);
}

}  // namespace spillway::kv
