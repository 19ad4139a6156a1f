#include "spillway/analysis/cache_view.h"

#include <fmt/core.h>

#include <algorithm>

#include "spillway/core/error.h"

namespace spillway::analysis {

const char* token_state_name(TokenState s) {
  switch (s) {
    case TokenState::kSink:
      return "sink";
    case TokenState::kWindow:
      return "window";
    case TokenState::kKept:
      return "kept";
    case TokenState::kEvicted:
      return "evicted";
  }
  return "?";
}

CacheLayout cache_layout(const kv::Cache& cache, int64_t n_past, int64_t first_listed) {
  CacheLayout out;
  out.n_past = n_past;
  out.first_listed = std::clamp<int64_t>(first_listed, 0, n_past);
  const kv::StepPlan& step = cache.step();
  if (step.groups.empty() || step.groups[0].tokens.empty() || n_past == 0) {
    out.n_evicted = n_past;
    for (int64_t i = out.first_listed; i < n_past; ++i) out.tokens.push_back({i});
    return out;
  }
  const kv::BatchPlan& plan = step.groups[0];
  const kv::TokenPlan& last = plan.tokens.back();
  // Policies that replay their window plan the replay's indices (0..len-1).
  const int64_t offset = n_past - 1 - last.stream_index;
  if (offset < 0)
    throw InvalidArgument(
        fmt::format("cache_layout: a stream of {} tokens, but the last plan is of stream index {}",
                    n_past, last.stream_index));
  const std::vector<int64_t> contents = cache.group_policy(0).slot_contents();

  // Stream index -> (slot, query position, sink) for every slot the last query attends to.
  struct Seen {
    int64_t index;
    int32_t slot;
    int64_t query_pos;
    bool sink;
  };
  std::vector<Seen> seen;
  for (int32_t r = last.range_begin; r < last.range_end; ++r) {
    const kv::SlotRange& range = plan.ranges[static_cast<size_t>(r)];
    for (int32_t s = range.begin; s < range.end; ++s) {
      const int64_t m =
          s < static_cast<int32_t>(contents.size()) ? contents[static_cast<size_t>(s)] : -1;
      if (m < 0) continue;  // cannot happen for a policy that keeps its contract
      seen.push_back({m + offset, s, range.query_pos, range.sink});
    }
  }
  std::sort(seen.begin(), seen.end(),
            [](const Seen& a, const Seen& b) { return a.index < b.index; });
  // The window: the unbroken run of non-sink indices that ends at the last token.
  int64_t window_start = n_past;
  for (auto it = seen.rbegin(); it != seen.rend(); ++it) {
    if (it->sink || it->index != window_start - 1) break;
    window_start = it->index;
  }
  size_t k = 0;
  auto add_evicted = [&](int64_t from, int64_t to) {  // [from, to)
    out.n_evicted += std::max<int64_t>(0, to - from);
    for (int64_t i = std::max(from, out.first_listed); i < to; ++i) out.tokens.push_back({i});
  };
  int64_t next = 0;
  for (; k < seen.size(); ++k) {
    const Seen& s = seen[k];
    if (s.index < next) continue;  // a slot twice in the plan: counted once
    add_evicted(next, s.index);
    CachedToken t;
    t.index = s.index;
    t.slot = s.slot;
    t.key_pos = s.index - offset;  // every key is rotated at its (plan) stream index
    t.query_pos = s.query_pos;
    t.state = s.sink                    ? TokenState::kSink
              : s.index >= window_start ? TokenState::kWindow
                                        : TokenState::kKept;
    (t.state == TokenState::kSink     ? out.n_sink
     : t.state == TokenState::kWindow ? out.n_window
                                      : out.n_kept)++;
    out.tokens.push_back(t);
    next = s.index + 1;
  }
  add_evicted(next, n_past);
  return out;
}

LastTokenAttention::LastTokenAttention(const model::ModelConfig& config, int64_t first,
                                       int64_t recent) {
  if (first < 1 || recent < 1)
    throw InvalidArgument(fmt::format(
        "LastTokenAttention: first and recent must be >= 1, found {} and {}", first, recent));
  pending_.n_layer = config.n_layer;
  pending_.n_head = config.n_head;
  pending_.first = first;
  pending_.recent = recent;
  const size_t cells = static_cast<size_t>(config.n_layer * config.n_head);
  pending_.sink.assign(cells, 0.0f);
  pending_.first_tokens.assign(cells, 0.0f);
  pending_.newest.assign(cells, 0.0f);
  pending_.span.assign(static_cast<size_t>(config.n_layer), 0);
  shares_ = pending_;
}

void LastTokenAttention::on_attach(const kv::Cache& cache) {
  cache_ = &cache;
}

void LastTokenAttention::on_step(const kv::StepPlan& plan) {
  pending_.stream_index = -1;
  if (plan.n_tokens() == 0) return;
  group_of_layer_ = plan.group_of_layer;
  slot_stream_.resize(plan.groups.size());
  for (size_t g = 0; g < plan.groups.size(); ++g)
    slot_stream_[g] =
        cache_ ? cache_->group_policy(static_cast<int>(g)).slot_contents() : std::vector<int64_t>{};
  pending_.stream_index = plan.groups[0].tokens.back().stream_index;
}

void LastTokenAttention::on_attention(const model::AttentionRecord& rec) {
  if (!rec.probs || rec.n_tokens == 0 || rec.layer < 0 || rec.layer >= pending_.n_layer) return;
  const kv::BatchPlan& plan = *rec.plan;
  const int64_t t = rec.n_tokens - 1;
  const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
  const int64_t span = plan.span_size(static_cast<size_t>(t));
  const int32_t g = group_of_layer_.empty() ? 0 : group_of_layer_[static_cast<size_t>(rec.layer)];
  const std::vector<int64_t>& contents = slot_stream_[static_cast<size_t>(g)];
  const int64_t n = tp.stream_index;
  const float* p = rec.probs + rec.prob_offset[t];
  for (int64_t h = 0; h < rec.n_head && h < pending_.n_head; ++h) {
    double sink = 0, first = 0, newest = 0;
    int64_t j = 0;
    for (int32_t r = tp.range_begin; r < tp.range_end; ++r) {
      const kv::SlotRange& range = plan.ranges[static_cast<size_t>(r)];
      for (int32_t s = range.begin; s < range.end; ++s, ++j) {
        const double q = p[h * span + j];
        if (range.sink) sink += q;
        const int64_t m =
            static_cast<size_t>(s) < contents.size() ? contents[static_cast<size_t>(s)] : -1;
        if (m < 0) continue;
        if (m < pending_.first) first += q;
        if (m > n - pending_.recent) newest += q;
      }
    }
    const size_t cell = static_cast<size_t>(rec.layer * pending_.n_head + h);
    pending_.sink[cell] = static_cast<float>(sink);
    pending_.first_tokens[cell] = static_cast<float>(first);
    pending_.newest[cell] = static_cast<float>(newest);
  }
  pending_.span[static_cast<size_t>(rec.layer)] = span;
  // The last layer closes the step.
  if (rec.layer == pending_.n_layer - 1) shares_ = pending_;
}

}  // namespace spillway::analysis
