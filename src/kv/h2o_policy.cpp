// h2o:H+W — Heavy-Hitter Oracle (Zhang et al., 2023): the last W tokens plus the H older
// tokens with the largest attention accumulated since they entered the cache (summed over
// query heads and queries). One cache per layer, each scored by its own layer's attention,
// as in the paper. Decisions follow the attention token by token, so streams are fed one
// token per step.
#include <fmt/core.h>

#include <limits>

#include "policies.h"
#include "slot_set.h"
#include "spillway/core/error.h"

namespace spillway::kv {

namespace {

class H2oPolicy final : public Policy {
 public:
  H2oPolicy(int64_t heavy, int64_t window, const PolicyOptions& opts, const PolicyLimits& limits)
      : Policy(opts, limits),
        heavy_(heavy),
        window_(window),
        slots_(heavy + window),
        score_(static_cast<size_t>(heavy + window), 0.0) {}

  std::string spec() const override {
    return fmt::format("h2o:{}+{}{}", heavy_, window_, options_suffix(options_));
  }
  int64_t n_slots() const override { return heavy_ + window_; }
  std::optional<int64_t> capacity() const override { return heavy_ + window_; }
  bool wants_attention() const override { return true; }
  bool per_layer() const override { return true; }
  std::vector<int64_t> slot_contents() const override { return slots_.slot_contents(); }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<H2oPolicy>(*this); }

  void observe(const AttentionFeedback& f) override {
    for (int64_t t = 0; t < f.n_tokens; ++t) add_slot_mass(f, t, score_);
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override {
    for (int64_t n = n0; n < n0 + count; ++n) {
      if (slots_.size() == heavy_ + window_) {
        // Evict the lightest token outside the recent window (the oldest of equals).
        int64_t victim = -1;
        double lightest = std::numeric_limits<double>::infinity();
        for (const auto& [m, slot] : slots_.held()) {
          if (m > n - window_) break;
          if (score_[static_cast<size_t>(slot)] < lightest) {
            lightest = score_[static_cast<size_t>(slot)];
            victim = m;
          }
        }
        slots_.evict(victim);
      }
      TokenPlan t;
      t.stream_index = n;
      const size_t first_move = out.moves.size();
      const int32_t slot = slots_.admit(n, out.moves);
      for (size_t i = first_move; i < out.moves.size(); ++i)
        score_[static_cast<size_t>(out.moves[i].to)] =
            score_[static_cast<size_t>(out.moves[i].from)];
      score_[static_cast<size_t>(slot)] = 0.0;
      t.write_slot = slot;
      t.key_pos = n;
      t.range_begin = static_cast<int32_t>(out.ranges.size());
      slots_.append_ranges(n, options_.positions, out.ranges);
      t.range_end = static_cast<int32_t>(out.ranges.size());
      out.tokens.push_back(t);
    }
  }
  void on_reset() override {
    slots_.clear();
    std::fill(score_.begin(), score_.end(), 0.0);
  }
  void save_state(ByteWriter& w) const override {
    slots_.save(w);
    w.put_vector(score_);
  }
  void load_state(ByteReader& r) override {
    slots_.load(r, n_planned());
    r.get_into("slot scores", score_.data(), score_.size());
  }

 private:
  int64_t heavy_, window_;
  SlotSet slots_;
  std::vector<double> score_;  // [slot] accumulated attention of the token in the slot
};

}  // namespace

std::unique_ptr<Policy> make_h2o_policy(std::string_view args, const PolicyOptions& opts,
                                        const PolicyLimits& limits) {
  const std::string spec = fmt::format("h2o:{}", args);
  const auto [h, w] = parse_pair(args, "h2o:H+W (H heavy hitters plus a window of W)",
                                 "H (heavy hitters)", 0, "W (window)", 1, spec);
  return std::make_unique<H2oPolicy>(h, w, opts, limits);
}

}  // namespace spillway::kv
