// sink:S+W — StreamingLLM: the first S tokens (attention sinks) plus a sliding window of
// the last W tokens.
#include <fmt/core.h>

#include <limits>

#include "policies.h"
#include "spillway/core/error.h"

namespace spillway::kv {

namespace {
constexpr int64_t kMaxSlots = std::numeric_limits<int32_t>::max() / 2;
}

SinkWindowPolicy::SinkWindowPolicy(std::string name, int64_t sinks, int64_t window,
                                   const PolicyOptions& opts, const PolicyLimits& limits)
    : Policy(opts, limits),
      name_(std::move(name)),
      sinks_(sinks),
      window_(window),
      ring_(window + limits.max_batch - 1) {
  if (sinks_ + ring_ > kMaxSlots)
    throw InvalidArgument(fmt::format("policy '{}': {} slots is more than the {} supported", spec(),
                                      sinks_ + ring_, kMaxSlots));
}

std::string SinkWindowPolicy::spec() const {
  if (name_ == "window") return fmt::format("window:{}{}", window_, options_suffix(options_));
  return fmt::format("sink:{}+{}{}", sinks_, window_, options_suffix(options_));
}

int32_t SinkWindowPolicy::slot_of(int64_t m) const {
  return static_cast<int32_t>(m < sinks_ ? m : sinks_ + (m - sinks_) % ring_);
}

void SinkWindowPolicy::plan_tokens(int64_t n0, int64_t count, BatchPlan& out) {
  const int64_t span_max = sinks_ + window_;
  for (int64_t n = n0; n < n0 + count; ++n) {
    TokenPlan t;
    t.stream_index = n;
    t.write_slot = slot_of(n);
    t.key_pos = n;
    t.range_begin = static_cast<int32_t>(out.ranges.size());
    if (n < span_max) {
      // Nothing evicted yet: tokens 0..n sit in slots 0..n in order.
      out.ranges.push_back({0, static_cast<int32_t>(n + 1), n});
    } else {
      if (sinks_ > 0) {
        const int64_t q = options_.positions == PositionMode::kCache ? span_max - 1 : n;
        out.ranges.push_back({0, static_cast<int32_t>(sinks_), q, true});
      }
      // Window tokens n-W+1..n: ring offsets a..a+W-1 (mod ring), query at n.
      const int64_t a = (n - window_ + 1 - sinks_) % ring_;
      const int64_t first = std::min(window_, ring_ - a);
      out.ranges.push_back(
          {static_cast<int32_t>(sinks_ + a), static_cast<int32_t>(sinks_ + a + first), n});
      if (first < window_)
        out.ranges.push_back(
            {static_cast<int32_t>(sinks_), static_cast<int32_t>(sinks_ + window_ - first), n});
    }
    t.range_end = static_cast<int32_t>(out.ranges.size());
    out.tokens.push_back(t);
  }
}

std::vector<int64_t> SinkWindowPolicy::slot_contents() const {
  std::vector<int64_t> slots(static_cast<size_t>(n_slots()), -1);
  const int64_t n = n_planned();
  const int64_t oldest = std::max<int64_t>(sinks_, n - ring_);
  for (int64_t m = 0; m < std::min(sinks_, n); ++m) slots[slot_of(m)] = m;
  for (int64_t m = oldest; m < n; ++m) slots[slot_of(m)] = m;
  return slots;
}

std::unique_ptr<Policy> make_sink_policy(std::string_view args, const PolicyOptions& opts,
                                         const PolicyLimits& limits) {
  const std::string spec = fmt::format("sink:{}", args);
  const size_t plus = args.find('+');
  if (plus == std::string_view::npos)
    throw InvalidArgument(
        fmt::format("bad policy spec '{}': expected sink:S+W (S sink tokens "
                    "plus a window of W, e.g. sink:4+1020); {}",
                    spec, policy_usage()));
  const int64_t s = parse_count(args.substr(0, plus), 0, kMaxSlots, "S (sink tokens)", spec);
  const int64_t w = parse_count(args.substr(plus + 1), 1, kMaxSlots, "W (window)", spec);
  const auto evict = opts.find("evict").value_or("token");
  if (evict != "token" && evict != "turn")
    throw InvalidArgument(
        fmt::format("bad policy spec '{}': evict={} (expected evict=token, the oldest token "
                    "leaves, or evict=turn, the oldest whole chat turns leave); {}",
                    spec, evict, policy_usage()));
  if (evict == "turn") {
    if (s + w + limits.max_batch - 1 > kMaxSlots)
      throw InvalidArgument(fmt::format("policy '{}': {} slots is more than the {} supported", spec,
                                        s + w + limits.max_batch - 1, kMaxSlots));
    return make_turn_sink_policy(s, w, opts, limits);
  }
  return std::make_unique<SinkWindowPolicy>("sink", s, w, opts, limits);
}

}  // namespace spillway::kv
