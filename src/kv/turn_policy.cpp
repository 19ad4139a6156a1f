// sink:S+W,evict=turn — StreamingLLM for conversations: the cache holds at most S+W tokens,
// the conversation's start as sinks and the latest whole turns as the window.
//
// Turns are told by Policy::mark_turn_start (session/chat.h marks every message). The sinks
// are the first K tokens: K = max(S, P) where P is the first turn mark after 0 (the start
// of the conversation: BOS plus the system turn), unless that is more than half the cache,
// (S+W)/2, or the cache filled before any mark came: then K = S. K is fixed from then on.
// The window holds the remaining S+W-K slots: when a new token does not fit, the oldest
// whole turns leave, as few as make room; it never holds part of a turn except the current
// one when that turn alone exceeds the window (then its oldest tokens leave one by one, as
// in sink:S+W). Without marks the plans are sink:S+W's, slot for slot.
//
// What is held is always tokens 0..K-1 plus a run w0..n of the stream, so the cache is a
// ring like sink:S+W's: token m < K in slot m, token m >= K in slot K + (m - K) % ring,
// ring = S+W + max_batch - 1 - K. Positions follow the contract of policy.h: the sinks are
// scored with the query rotated at K + n - w0 (their rank distance), the window with the
// query at n.
#include <fmt/core.h>

#include <deque>

#include "policies.h"
#include "spillway/core/error.h"

namespace spillway::kv {

namespace {

class TurnSinkPolicy final : public Policy {
 public:
  TurnSinkPolicy(int64_t sinks, int64_t window, const PolicyOptions& opts,
                 const PolicyLimits& limits)
      : Policy(opts, limits),
        s_(sinks),
        w_(window),
        n_slots_(sinks + window + limits.max_batch - 1),
        k_(sinks) {}

  std::string spec() const override {
    return fmt::format("sink:{}+{},evict=turn{}", s_, w_, options_suffix(options_));
  }
  int64_t n_slots() const override { return n_slots_; }
  std::optional<int64_t> capacity() const override { return s_ + w_; }
  int64_t n_sinks() const override { return k_; }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<TurnSinkPolicy>(*this); }

  std::vector<int64_t> slot_contents() const override {
    std::vector<int64_t> slots(static_cast<size_t>(n_slots_), -1);
    const int64_t n = n_planned();
    if (!evicting_) {
      for (int64_t m = 0; m < n; ++m) slots[static_cast<size_t>(m)] = m;
      return slots;
    }
    for (int64_t m = 0; m < k_; ++m) slots[static_cast<size_t>(m)] = m;
    for (int64_t m = w0_; m < n; ++m) slots[static_cast<size_t>(slot_of(m))] = m;
    return slots;
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override {
    const int64_t budget = s_ + w_;
    for (int64_t n = n0; n < n0 + count; ++n) {
      if (!evicting_ && n >= budget) {
        // The cache is full for the first time: the sinks are fixed now if no mark did.
        decided_ = true;
        evicting_ = true;
        w0_ = k_;
      }
      if (evicting_) slide(n);
      TokenPlan t;
      t.stream_index = n;
      t.write_slot = slot_of(n);
      t.key_pos = n;
      t.range_begin = static_cast<int32_t>(out.ranges.size());
      if (!evicting_) {
        // Nothing evicted yet: tokens 0..n sit in slots 0..n in order.
        out.ranges.push_back({0, static_cast<int32_t>(n + 1), n});
      } else {
        if (k_ > 0) {
          const int64_t q = options_.positions == PositionMode::kCache ? k_ + n - w0_ : n;
          out.ranges.push_back({0, static_cast<int32_t>(k_), q, true});
        }
        // Window tokens w0..n: ring offsets a..a+len-1 (mod ring), query at n.
        const int64_t ring = n_slots_ - k_;
        const int64_t a = (w0_ - k_) % ring;
        const int64_t len = n - w0_ + 1;
        const int64_t first = std::min(len, ring - a);
        out.ranges.push_back(
            {static_cast<int32_t>(k_ + a), static_cast<int32_t>(k_ + a + first), n});
        if (first < len)
          out.ranges.push_back(
              {static_cast<int32_t>(k_), static_cast<int32_t>(k_ + len - first), n});
      }
      t.range_end = static_cast<int32_t>(out.ranges.size());
      out.tokens.push_back(t);
    }
  }

  void on_turn_start(int64_t n) override {
    if (!decided_) {
      // The first mark after 0 ends the conversation's start. Nothing was evicted yet, so
      // tokens 0..n_planned()-1 sit in slots 0.. whatever K becomes.
      decided_ = true;
      const int64_t k = std::max(s_, n);
      k_ = k <= (s_ + w_) / 2 ? k : s_;
    }
    marks_.push_back(n);
  }

  void on_reset() override {
    k_ = s_;
    w0_ = 0;
    decided_ = false;
    evicting_ = false;
    marks_.clear();
  }
  void save_state(ByteWriter& w) const override {
    w.put<int64_t>(k_);
    w.put<int64_t>(w0_);
    w.put_bool(decided_);
    w.put_bool(evicting_);
    const std::vector<int64_t> marks(marks_.begin(), marks_.end());
    w.put_vector(marks);
  }
  void load_state(ByteReader& r) override {
    k_ = r.get<int64_t>("sinks");
    w0_ = r.get<int64_t>("window start");
    decided_ = r.get_bool("sinks decided");
    evicting_ = r.get_bool("evicting");
    const auto marks = r.get_vector<int64_t>("turn marks", size_t{1} << 24);
    if (k_ < 0 || k_ >= n_slots_ || k_ > s_ + w_)
      r.fail(fmt::format("{} sinks do not fit {} slots", k_, n_slots_));
    if (w0_ < 0 || w0_ > n_planned() || (evicting_ && w0_ < k_))
      r.fail(fmt::format("window start {} outside {}..{}", w0_, k_, n_planned()));
    if (evicting_ && n_planned() - w0_ > n_slots_ - k_)
      r.fail(fmt::format("window {}..{} does not fit {} slots", w0_, n_planned(), n_slots_ - k_));
    if (!evicting_ && n_planned() > n_slots_)
      r.fail(fmt::format("{} tokens held without eviction in {} slots", n_planned(), n_slots_));
    for (size_t i = 0; i < marks.size(); ++i)
      if (marks[i] < 0 || (i > 0 && marks[i] <= marks[i - 1]))
        r.fail(fmt::format("turn mark {} ({}) is out of order", i, marks[i]));
    marks_.assign(marks.begin(), marks.end());
  }

 private:
  int32_t slot_of(int64_t m) const {
    return static_cast<int32_t>(m < k_ ? m : k_ + (m - k_) % (n_slots_ - k_));
  }

  // Moves the window start so that w0..n fits the window: to the first turn start that
  // leaves room, or, when the current turn alone is too long, token by token.
  void slide(int64_t n) {
    const int64_t window = s_ + w_ - k_;
    if (n - w0_ + 1 <= window) return;
    const int64_t least = n - window + 1;  // the window may start here at the earliest
    while (!marks_.empty() && marks_.front() < least) marks_.pop_front();
    if (!marks_.empty() && marks_.front() <= n) {
      w0_ = marks_.front();
      marks_.pop_front();
    } else {
      w0_ = least;
    }
  }

  int64_t s_, w_;
  int64_t n_slots_;
  int64_t k_;                  // sinks: tokens 0..k_-1
  int64_t w0_ = 0;             // first window token (once evicting)
  bool decided_ = false;       // k_ is final
  bool evicting_ = false;      // the cache has filled: held = [0, k_) + [w0_, n_planned)
  std::deque<int64_t> marks_;  // turn starts not yet behind the window, ascending
};

}  // namespace

std::unique_ptr<Policy> make_turn_sink_policy(int64_t sinks, int64_t window,
                                              const PolicyOptions& opts,
                                              const PolicyLimits& limits) {
  return std::make_unique<TurnSinkPolicy>(sinks, window, opts, limits);
}

}  // namespace spillway::kv
