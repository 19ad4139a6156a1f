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
      : Policy(opts), window_(window), max_batch_(limits.max_batch) {}

  std::string spec() const override {
    return fmt::format("recompute:{}{}", window_, options_suffix(options_));
  }
  int64_t n_slots() const override { return window_; }
  std::optional<int64_t> capacity() const override { return window_; }

  std::optional<int64_t> replay_from(int64_t n) const override {
    return std::max<int64_t>(0, n - window_ + 1);
  }

  // Plans the replayed sub-stream: its tokens sit in slots 0..W-1 at positions 0..W-1
  // (absolute mode makes no difference: only distances enter the scores).
  void plan(int64_t n0, int64_t count, BatchPlan& out) override {
    if (n0 != n_next_ || count < 0 || count > max_batch_ || n0 + count > window_)
      throw InvalidArgument(fmt::format(
          "policy '{}': plan({}, {}) must replay at most {} tokens from an empty cache in "
          "order, batches of at most {}",
          spec(), n0, count, window_, max_batch_));
    append_dense_plan(n0, count, out);
    n_next_ = n0 + count;
  }

  void reset() override { n_next_ = 0; }

  std::vector<int64_t> slot_contents() const override {
    std::vector<int64_t> slots(static_cast<size_t>(window_), -1);
    for (int64_t m = 0; m < n_next_; ++m) slots[static_cast<size_t>(m)] = m;
    return slots;
  }

 private:
  int64_t window_;
  int64_t max_batch_;
  int64_t n_next_ = 0;
};

}  // namespace

std::unique_ptr<Policy> make_recompute_policy(std::string_view args, const PolicyOptions& opts,
                                              const PolicyLimits& limits) {
  const int64_t w = parse_count(args, 1, std::numeric_limits<int32_t>::max() / 2, "W (window)",
                                fmt::format("recompute:{}", args));
  return std::make_unique<RecomputePolicy>(w, opts, limits);
}

}  // namespace spillway::kv
