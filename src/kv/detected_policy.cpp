// detected:S+W — attention sinks found, not assumed: until the cache first fills, every
// token's attention mass is summed (over query heads and queries); then the S tokens
// outside the window that received the most become the sinks, kept for good next to the
// last W tokens. Positions stay the StreamingLLM rule (ranks in the cache). One cache per
// layer: each layer keeps the sinks its own heads use. Option pick=first keeps tokens
// 0..S-1 instead (then it is sink:S+W). Streams are fed one token per step.
#include <fmt/core.h>

#include <algorithm>
#include <limits>

#include "policies.h"
#include "slot_set.h"
#include "spillway/core/error.h"

namespace spillway::kv {

namespace {

class DetectedPolicy final : public Policy {
 public:
  DetectedPolicy(int64_t sinks, int64_t window, bool pick_first, const PolicyOptions& opts,
                 const PolicyLimits& limits)
      : Policy(opts, limits),
        n_sinks_(sinks),
        window_(window),
        pick_first_(pick_first),
        slots_(sinks + window),
        mass_(static_cast<size_t>(sinks + window), 0.0) {}

  std::string spec() const override {
    return fmt::format("detected:{}+{}{}{}", n_sinks_, window_, pick_first_ ? ",pick=first" : "",
                       options_suffix(options_));
  }
  int64_t n_slots() const override { return n_sinks_ + window_; }
  std::optional<int64_t> capacity() const override { return n_sinks_ + window_; }
  int64_t n_sinks() const override { return n_sinks_; }
  bool wants_attention() const override { return !chosen_ && !pick_first_ && n_sinks_ > 0; }
  bool per_layer() const override { return true; }
  std::vector<int64_t> slot_contents() const override { return slots_.slot_contents(); }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<DetectedPolicy>(*this); }

  void observe(const AttentionFeedback& f) override {
    // Nothing was evicted yet: slot s holds stream index s.
    for (int64_t t = 0; t < f.n_tokens; ++t) add_slot_mass(f, t, mass_);
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override {
    for (int64_t n = n0; n < n0 + count; ++n) {
      if (slots_.size() == n_sinks_ + window_) {
        if (!chosen_) choose(n);
        // The oldest token that is neither a sink nor in the window goes.
        for (const auto& [m, slot] : slots_.held()) {
          if (!std::binary_search(sinks_.begin(), sinks_.end(), m)) {
            slots_.evict(m);
            break;
          }
        }
      }
      TokenPlan t;
      t.stream_index = n;
      t.write_slot = slots_.admit(n, out.moves);
      t.key_pos = n;
      t.range_begin = static_cast<int32_t>(out.ranges.size());
      slots_.append_ranges(n, options_.positions, out.ranges, &sinks_);
      t.range_end = static_cast<int32_t>(out.ranges.size());
      out.tokens.push_back(t);
    }
  }
  void on_reset() override {
    slots_.clear();
    sinks_.clear();
    chosen_ = false;
    std::fill(mass_.begin(), mass_.end(), 0.0);
  }
  void save_state(ByteWriter& w) const override {
    slots_.save(w);
    w.put_vector(mass_);
    w.put_vector(sinks_);
    w.put_bool(chosen_);
  }
  void load_state(ByteReader& r) override {
    slots_.load(r, n_planned());
    r.get_into("attention mass", mass_.data(), mass_.size());
    sinks_ = r.get_vector<int64_t>("sinks", static_cast<size_t>(n_sinks_));
    for (size_t i = 0; i < sinks_.size(); ++i)
      if (sinks_[i] < 0 || sinks_[i] >= n_planned() || (i > 0 && sinks_[i] <= sinks_[i - 1]))
        r.fail(fmt::format("sink {} (stream index {}) is out of order or beyond the stream", i,
                           sinks_[i]));
    chosen_ = r.get_bool("sinks chosen");
  }

 private:
  // The cache is full for the first time when token n arrives: tokens 0..n-1 sit in slots
  // 0..n-1; the sinks are the S heaviest of those outside token n's window.
  void choose(int64_t n) {
    chosen_ = true;
    std::vector<int64_t> candidates;
    for (int64_t m = 0; m <= n - window_; ++m) candidates.push_back(m);
    if (!pick_first_) {
      std::stable_sort(candidates.begin(), candidates.end(), [&](int64_t a, int64_t b) {
        return mass_[static_cast<size_t>(a)] > mass_[static_cast<size_t>(b)];
      });
    }
    for (int64_t i = 0; i < n_sinks_ && i < static_cast<int64_t>(candidates.size()); ++i)
      sinks_.push_back(candidates[static_cast<size_t>(i)]);
    std::sort(sinks_.begin(), sinks_.end());
  }

  int64_t n_sinks_, window_;
  bool pick_first_;
  SlotSet slots_;
  std::vector<double> mass_;    // [stream index] attention received before the cache filled
  std::vector<int64_t> sinks_;  // stream indices, ascending
  bool chosen_ = false;
};

}  // namespace

std::unique_ptr<Policy> make_detected_policy(std::string_view args, const PolicyOptions& opts,
                                             const PolicyLimits& limits) {
  const std::string spec = fmt::format("detected:{}", args);
  const auto [s, w] = parse_pair(args, "detected:S+W (S detected sinks plus a window of W)",
                                 "S (sinks)", 0, "W (window)", 1, spec);
  bool first = false;
  if (auto pick = opts.find("pick")) {
    if (*pick != "mass" && *pick != "first")
      throw InvalidArgument(
          fmt::format("bad policy spec '{}': pick={} (expected pick=mass, the heaviest tokens, or "
                      "pick=first, tokens 0..S-1); {}",
                      spec, *pick, policy_usage()));
    first = *pick == "first";
  }
  return std::make_unique<DetectedPolicy>(s, w, first, opts, limits);
}

}  // namespace spillway::kv
