// Factories of the built-in policies (one file each); registry.cpp lists them.
#pragma once

#include <memory>
#include <string_view>

#include "spillway/kv/policy.h"

namespace spillway::kv {

std::unique_ptr<Policy> make_full_policy(std::string_view args, const PolicyOptions& opts,
                                         const PolicyLimits& limits);
std::unique_ptr<Policy> make_window_policy(std::string_view args, const PolicyOptions& opts,
                                           const PolicyLimits& limits);
std::unique_ptr<Policy> make_sink_policy(std::string_view args, const PolicyOptions& opts,
                                         const PolicyLimits& limits);
// sink:S+W,evict=turn (turn_policy.cpp): S and W already checked.
std::unique_ptr<Policy> make_turn_sink_policy(int64_t sinks, int64_t window,
                                              const PolicyOptions& opts,
                                              const PolicyLimits& limits);
std::unique_ptr<Policy> make_recompute_policy(std::string_view args, const PolicyOptions& opts,
                                              const PolicyLimits& limits);

std::unique_ptr<Policy> make_h2o_policy(std::string_view args, const PolicyOptions& opts,
                                        const PolicyLimits& limits);
std::unique_ptr<Policy> make_tova_policy(std::string_view args, const PolicyOptions& opts,
                                         const PolicyLimits& limits);
std::unique_ptr<Policy> make_detected_policy(std::string_view args, const PolicyOptions& opts,
                                             const PolicyLimits& limits);
std::unique_ptr<Policy> make_nullsink_policy(std::string_view args, const PolicyOptions& opts,
                                             const PolicyLimits& limits);

// Adds to mass[slot] the probability token t of the feedback's plan put on each slot,
// summed over heads (mass must have a slot count's entries).
void add_slot_mass(const AttentionFeedback& f, int64_t t, std::vector<double>& mass);

// Parses "A+B" of a spec into two counts (InvalidArgument naming the parts).
std::pair<int64_t, int64_t> parse_pair(std::string_view args, std::string_view form,
                                       std::string_view what_a, int64_t min_a,
                                       std::string_view what_b, int64_t min_b,
                                       std::string_view spec);

// Shared by the factories: a whole number in [min, max] or InvalidArgument naming `what`
// in `spec`.
int64_t parse_count(std::string_view text, int64_t min, int64_t max, std::string_view what,
                    std::string_view spec);
// Appends the plan of a dense cache for tokens [n0, n0 + count): token m in slot m, key
// at position m, attending to slots [0, m] with the query at m.
void append_dense_plan(int64_t n0, int64_t count, BatchPlan& out);

// Slot contents of a dense cache (token m in slot m) after n_planned tokens.
std::vector<int64_t> dense_slot_contents(int64_t n_slots, int64_t n_planned);

// Canonical option suffix (",positions=absolute"; empty for the defaults).
std::string options_suffix(const PolicyOptions& opts);

// Sink + sliding window over a ring (window:W is sinks = 0). Stream token m < S lives in
// slot m; token m >= S in slot S + (m - S) % ring, ring = W + max_batch - 1.
class SinkWindowPolicy final : public Policy {
 public:
  SinkWindowPolicy(std::string name, int64_t sinks, int64_t window, const PolicyOptions& opts,
                   const PolicyLimits& limits);
  std::string spec() const override;
  int64_t n_slots() const override { return sinks_ + ring_; }
  std::optional<int64_t> capacity() const override { return sinks_ + window_; }
  int64_t n_sinks() const override { return sinks_; }
  bool seekable() const override { return true; }  // a plan depends on n alone
  std::vector<int64_t> slot_contents() const override;
  std::unique_ptr<Policy> clone() const override {
    return std::make_unique<SinkWindowPolicy>(*this);
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override;

 private:
  int32_t slot_of(int64_t m) const;

  std::string name_;
  int64_t sinks_, window_, ring_;
};

}  // namespace spillway::kv
