// full — the dense baseline: every token stays; the cache grows with the stream.
#include <fmt/core.h>

#include <limits>

#include "policies.h"
#include "spillway/core/error.h"

namespace spillway::kv {

namespace {

class FullPolicy final : public Policy {
 public:
  FullPolicy(const PolicyOptions& opts, const PolicyLimits& limits)
      : Policy(opts, limits), reserve_(limits.max_stream) {}

  std::string spec() const override { return "full" + options_suffix(options_); }
  int64_t n_slots() const override { return std::max(n_planned(), reserve_); }
  std::optional<int64_t> capacity() const override { return std::nullopt; }
  std::vector<int64_t> slot_contents() const override {
    return dense_slot_contents(n_slots(), n_planned());
  }

  std::unique_ptr<Policy> clone() const override { return std::make_unique<FullPolicy>(*this); }

 protected:
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override {
    if (n0 + count > std::numeric_limits<int32_t>::max() / 2)
      throw InvalidArgument(fmt::format("policy 'full': {} tokens do not fit a cache", n0 + count));
    append_dense_plan(n0, count, out);
  }

 private:
  int64_t reserve_;
};

}  // namespace

std::unique_ptr<Policy> make_full_policy(std::string_view args, const PolicyOptions& opts,
                                         const PolicyLimits& limits) {
  return std::make_unique<FullPolicy>(opts, limits);
}

}  // namespace spillway::kv
