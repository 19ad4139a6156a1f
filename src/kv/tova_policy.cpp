// tova:C — Token Omission Via Attention (Oren et al., 2024): once the cache holds C tokens,
// each new token first evicts the one the latest query attended to least (its probability
// averaged over the query heads). One cache per layer, scored by that layer's attention, as
// in the paper. Decisions follow the attention token by token, so streams are fed one token
// per step.
#include <fmt/core.h>

#include <limits>

#include "policies.h"
#include "slot_set.h"
#include "spillway/core/error.h"

namespace spillway::kv {

namespace {

class TovaPolicy final : public Policy {
 public:
  TovaPolicy(int64_t capacity, const PolicyOptions& opts, const PolicyLimits& limits)
      : Policy(opts, limits),
        capacity_(capacity),
        slots_(capacity),
        score_(static_cast<size_t>(capacity), 0.0) {}

  std::string spec() const override {
    return fmt::format("tova:{}{}", capacity_, options_suffix(options_));
  }
  int64_t n_slots() const override { return capacity_; }
  std::optional<int64_t> capacity() const override { return capacity_; }
  bool wants_attention() const override { return true; }
  bool per_layer() const override { return true; }
  std::vector<int64_t> slot_contents() const override { return slots_.slot_contents(); }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<TovaPolicy>(*this); }

  void observe(const AttentionFeedback& f) override {
    // The latest query's attention only (a sum over heads ranks as their average does).
    std::fill(score_.begin(), score_.end(), 0.0);
    add_slot_mass(f, f.n_tokens - 1, score_);
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override {
    for (int64_t n = n0; n < n0 + count; ++n) {
      if (slots_.size() == capacity_) {
        int64_t victim = -1;
        double least = std::numeric_limits<double>::infinity();
        for (const auto& [m, slot] : slots_.held()) {
          if (score_[static_cast<size_t>(slot)] < least) {
            least = score_[static_cast<size_t>(slot)];
            victim = m;
          }
        }
        slots_.evict(victim);
      }
      TokenPlan t;
      t.stream_index = n;
      const size_t first_move = out.moves.size();
      t.write_slot = slots_.admit(n, out.moves);
      for (size_t i = first_move; i < out.moves.size(); ++i)
        score_[static_cast<size_t>(out.moves[i].to)] =
            score_[static_cast<size_t>(out.moves[i].from)];
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
  int64_t capacity_;
  SlotSet slots_;
  std::vector<double> score_;  // [slot] the latest query's attention on the token there
};

}  // namespace

std::unique_ptr<Policy> make_tova_policy(std::string_view args, const PolicyOptions& opts,
                                         const PolicyLimits& limits) {
  const int64_t c = parse_count(args, 1, std::numeric_limits<int32_t>::max() / 2, "C (cache size)",
                                fmt::format("tova:{}", args));
  return std::make_unique<TovaPolicy>(c, opts, limits);
}

}  // namespace spillway::kv
