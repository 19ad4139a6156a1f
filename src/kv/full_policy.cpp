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
      : Policy(opts), max_batch_(limits.max_batch), reserve_(limits.max_stream) {}

  std::string spec() const override { return "full" + options_suffix(options_); }
  int64_t n_slots() const override { return std::max(n_next_, reserve_); }
  std::optional<int64_t> capacity() const override { return std::nullopt; }

  void plan(int64_t n0, int64_t count, BatchPlan& out) override {
    if (n0 != n_next_ || count < 0 || count > max_batch_)
      throw InvalidArgument(
          fmt::format("policy 'full': plan({}, {}) out of order or over the "
                      "batch limit (next token {}, max batch {})",
                      n0, count, n_next_, max_batch_));
    if (n0 + count > std::numeric_limits<int32_t>::max() / 2)
      throw InvalidArgument(fmt::format("policy 'full': {} tokens do not fit a cache", n0 + count));
    append_dense_plan(n0, count, out);
    n_next_ = n0 + count;
  }

  void reset() override { n_next_ = 0; }

  std::vector<int64_t> slot_contents() const override {
    std::vector<int64_t> slots(static_cast<size_t>(n_slots()), -1);
    for (int64_t m = 0; m < n_next_; ++m) slots[static_cast<size_t>(m)] = m;
    return slots;
  }

 private:
  int64_t max_batch_;
  int64_t reserve_;
  int64_t n_next_ = 0;
};

}  // namespace

std::unique_ptr<Policy> make_full_policy(std::string_view args, const PolicyOptions& opts,
                                         const PolicyLimits& limits) {
  return std::make_unique<FullPolicy>(opts, limits);
}

}  // namespace spillway::kv
