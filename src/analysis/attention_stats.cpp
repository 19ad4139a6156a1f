#include "spillway/analysis/attention_stats.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "spillway/core/error.h"

namespace spillway::analysis {

AttentionStats::AttentionStats(const model::ModelConfig& c, const AttentionStatsOptions& opts)
    : n_layer_(c.n_layer),
      n_head_(c.n_head),
      n_head_kv_(c.n_head_kv),
      head_dim_(c.head_dim),
      opts_(opts),
      first_(opts.first) {
  if (opts.first < 0 || opts.count < 1 || opts.key_tokens < 0)
    throw InvalidArgument(fmt::format(
        "attention statistics: first {} must be >= 0, count {} >= 1, key_tokens {} >= 0",
        opts.first, opts.count, opts.key_tokens));
  const auto L = static_cast<size_t>(n_layer_);
  mass_stream_.resize(L * static_cast<size_t>(n_head_));
  mass_rank_.resize(L * static_cast<size_t>(n_head_));
  rank_queries_.resize(L);
  sink_mass_.assign(L * static_cast<size_t>(n_head_), 0.0);
  sink_queries_.assign(L, 0);
  hidden_norm_.resize(L + 1);
  hidden_max_.resize(L + 1);
  key_norm_.resize(L);
  value_norm_.resize(L);
  keys_.assign(L, std::vector<float>(static_cast<size_t>(opts.key_tokens * n_head_kv_ * head_dim_),
                                     std::numeric_limits<float>::quiet_NaN()));
  key_sum_.assign(L, std::vector<double>(static_cast<size_t>(n_head_kv_ * head_dim_), 0.0));
  key_sum_count_.assign(L, 0);
}

int64_t AttentionStats::recorded(int64_t t) const {
  const int64_t n = step_stream_[static_cast<size_t>(t)];
  if (n < first_ || n - first_ >= opts_.count) return -1;
  return n - first_;
}

void AttentionStats::on_attach(const kv::Cache& cache) {
  slot_owner_.resize(static_cast<size_t>(cache.n_groups()));
  for (int g = 0; g < cache.n_groups(); ++g)
    slot_owner_[static_cast<size_t>(g)] = cache.group_policy(g).slot_contents();
  n_keys_ = std::max(n_keys_, cache.n_planned());
}

void AttentionStats::on_step(const kv::StepPlan& plan) {
  group_of_layer_ = plan.group_of_layer;
  if (slot_owner_.size() < plan.groups.size()) slot_owner_.resize(plan.groups.size());
  const kv::BatchPlan& main = plan.groups[0];
  step_stream_.resize(main.tokens.size());
  step_records_ = false;
  for (size_t g = 0; g < plan.groups.size(); ++g) {
    std::vector<int64_t>& owner = slot_owner_[g];
    for (const kv::TokenPlan& tp : plan.groups[g].tokens) {
      if (static_cast<size_t>(tp.write_slot) >= owner.size())
        owner.resize(static_cast<size_t>(tp.write_slot) + 1, -1);
      owner[static_cast<size_t>(tp.write_slot)] = tp.stream_index;
    }
  }
  for (size_t t = 0; t < main.tokens.size(); ++t) {
    step_stream_[t] = main.tokens[t].stream_index;
    n_keys_ = std::max(n_keys_, main.tokens[t].stream_index + 1);
    step_records_ |= recorded(static_cast<int64_t>(t)) >= 0;
  }
  for (size_t t = 0; t < main.tokens.size(); ++t) {
    const int64_t i = recorded(static_cast<int64_t>(t));
    if (i >= 0) n_queries_ = std::max(n_queries_, i + 1);
  }
}

void AttentionStats::on_attention(const model::AttentionRecord& r) {
  if (!step_records_) return;
  const int64_t l = r.layer;
  const kv::BatchPlan& plan = *r.plan;
  const std::vector<int64_t>& owner =
      slot_owner_[static_cast<size_t>(group_of_layer_[static_cast<size_t>(l)])];
  const int64_t hd = head_dim_, nkv = n_head_kv_;
  for (int64_t t = 0; t < r.n_tokens; ++t) {
    const int64_t i = recorded(t);
    if (i < 0) continue;
    // Key and value norms, keys kept or averaged.
    std::vector<float>& kn = key_norm_[static_cast<size_t>(l)];
    std::vector<float>& vn = value_norm_[static_cast<size_t>(l)];
    if (kn.size() < static_cast<size_t>((i + 1) * nkv)) {
      kn.resize(static_cast<size_t>((i + 1) * nkv), 0.0f);
      vn.resize(static_cast<size_t>((i + 1) * nkv), 0.0f);
    }
    const int64_t stream = step_stream_[static_cast<size_t>(t)];
    for (int64_t g = 0; g < nkv; ++g) {
      const float* k = r.k_rows + (t * nkv + g) * hd;
      const float* v = r.v_rows + (t * nkv + g) * hd;
      double ks = 0, vs = 0;
      for (int64_t j = 0; j < hd; ++j) {
        ks += static_cast<double>(k[j]) * k[j];
        vs += static_cast<double>(v[j]) * v[j];
      }
      kn[static_cast<size_t>(i * nkv + g)] = static_cast<float>(std::sqrt(ks));
      vn[static_cast<size_t>(i * nkv + g)] = static_cast<float>(std::sqrt(vs));
      if (stream < opts_.key_tokens) {
        std::copy(k, k + hd, keys_[static_cast<size_t>(l)].begin() + (stream * nkv + g) * hd);
      } else {
        std::vector<double>& sum = key_sum_[static_cast<size_t>(l)];
        for (int64_t j = 0; j < hd; ++j) sum[static_cast<size_t>(g * hd + j)] += k[j];
      }
    }
    if (stream >= opts_.key_tokens) ++key_sum_count_[static_cast<size_t>(l)];
    if (!r.probs) continue;

    // Probabilities: by stream index, by rank, on sink ranges.
    const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
    const int64_t span = plan.span_size(static_cast<size_t>(t));
    std::vector<int64_t>& rq = rank_queries_[static_cast<size_t>(l)];
    if (rq.size() < static_cast<size_t>(span)) rq.resize(static_cast<size_t>(span), 0);
    for (int64_t k = 0; k < span; ++k) ++rq[static_cast<size_t>(k)];
    bool has_sink_range = false;
    for (int64_t h = 0; h < n_head_; ++h) {
      const float* p = r.probs + r.prob_offset[t] + h * span;
      std::vector<double>& by_stream = mass_stream_[lh(l, h)];
      std::vector<double>& by_rank = mass_rank_[lh(l, h)];
      if (by_stream.size() < static_cast<size_t>(n_keys_))
        by_stream.resize(static_cast<size_t>(n_keys_), 0.0);
      if (by_rank.size() < static_cast<size_t>(span))
        by_rank.resize(static_cast<size_t>(span), 0.0);
      int64_t rank = 0;
      for (int32_t ri = tp.range_begin; ri < tp.range_end; ++ri) {
        const kv::SlotRange& sr = plan.ranges[static_cast<size_t>(ri)];
        has_sink_range |= sr.sink;
        for (int32_t s = sr.begin; s < sr.end; ++s, ++rank) {
          const double a = p[rank];
          by_rank[static_cast<size_t>(rank)] += a;
          const int64_t key =
              static_cast<size_t>(s) < owner.size() ? owner[static_cast<size_t>(s)] : -1;
          if (key >= 0) by_stream[static_cast<size_t>(key)] += a;
          if (sr.sink) sink_mass_[lh(l, h)] += a;
        }
      }
    }
    if (has_sink_range) ++sink_queries_[static_cast<size_t>(l)];
  }
}

void AttentionStats::on_hidden(int64_t layer, const float* x, int64_t n_tokens, int64_t n_embd) {
  if (!step_records_) return;
  const auto li = static_cast<size_t>(layer + 1);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t i = recorded(t);
    if (i < 0) continue;
    double ss = 0, mx = 0;
    for (int64_t j = 0; j < n_embd; ++j) {
      const double v = x[t * n_embd + j];
      ss += v * v;
      mx = std::max(mx, std::abs(v));
    }
    if (hidden_norm_[li].size() <= static_cast<size_t>(i)) {
      hidden_norm_[li].resize(static_cast<size_t>(i) + 1, 0.0f);
      hidden_max_[li].resize(static_cast<size_t>(i) + 1, 0.0f);
    }
    hidden_norm_[li][static_cast<size_t>(i)] = static_cast<float>(std::sqrt(ss));
    hidden_max_[li][static_cast<size_t>(i)] = static_cast<float>(mx);
  }
}

namespace {
void check(int64_t v, int64_t n, const char* what) {
  if (v < 0 || v >= n)
    throw InvalidArgument(fmt::format("attention statistics: {} {} outside [0, {})", what, v, n));
}
}  // namespace

const std::vector<double>& AttentionStats::mass_by_stream(int64_t layer, int64_t head) const {
  check(layer, n_layer_, "layer");
  check(head, n_head_, "head");
  return mass_stream_[lh(layer, head)];
}

const std::vector<double>& AttentionStats::mass_by_rank(int64_t layer, int64_t head) const {
  check(layer, n_layer_, "layer");
  check(head, n_head_, "head");
  return mass_rank_[lh(layer, head)];
}

const std::vector<int64_t>& AttentionStats::queries_by_rank(int64_t layer) const {
  check(layer, n_layer_, "layer");
  return rank_queries_[static_cast<size_t>(layer)];
}

double AttentionStats::sink_range_mass(int64_t layer, int64_t head) const {
  check(layer, n_layer_, "layer");
  check(head, n_head_, "head");
  return sink_mass_[lh(layer, head)];
}

int64_t AttentionStats::sink_range_queries(int64_t layer) const {
  check(layer, n_layer_, "layer");
  return sink_queries_[static_cast<size_t>(layer)];
}

double AttentionStats::alpha(int64_t layer, int64_t head, int64_t k) const {
  const std::vector<double>& m = mass_by_stream(layer, head);
  const int64_t last = first_ + n_queries_;  // one past the last recorded query
  const int64_t queries = last - std::max(k, first_);
  if (k < 0 || queries <= 0) return std::numeric_limits<double>::quiet_NaN();
  const double mass = k < static_cast<int64_t>(m.size()) ? m[static_cast<size_t>(k)] : 0.0;
  return mass / static_cast<double>(queries);
}

double AttentionStats::hidden_norm(int64_t layer, int64_t i) const {
  check(layer, n_layer_ + 1, "layer");
  check(i, static_cast<int64_t>(hidden_norm_[static_cast<size_t>(layer)].size()), "token");
  return hidden_norm_[static_cast<size_t>(layer)][static_cast<size_t>(i)];
}

double AttentionStats::hidden_max(int64_t layer, int64_t i) const {
  check(layer, n_layer_ + 1, "layer");
  check(i, static_cast<int64_t>(hidden_max_[static_cast<size_t>(layer)].size()), "token");
  return hidden_max_[static_cast<size_t>(layer)][static_cast<size_t>(i)];
}

double AttentionStats::key_norm(int64_t layer, int64_t i, int64_t kvh) const {
  check(layer, n_layer_, "layer");
  check(kvh, n_head_kv_, "KV head");
  const auto& v = key_norm_[static_cast<size_t>(layer)];
  check(i, static_cast<int64_t>(v.size()) / n_head_kv_, "token");
  return v[static_cast<size_t>(i * n_head_kv_ + kvh)];
}

double AttentionStats::value_norm(int64_t layer, int64_t i, int64_t kvh) const {
  check(layer, n_layer_, "layer");
  check(kvh, n_head_kv_, "KV head");
  const auto& v = value_norm_[static_cast<size_t>(layer)];
  check(i, static_cast<int64_t>(v.size()) / n_head_kv_, "token");
  return v[static_cast<size_t>(i * n_head_kv_ + kvh)];
}

std::vector<float> AttentionStats::key(int64_t layer, int64_t kvh, int64_t k) const {
  check(layer, n_layer_, "layer");
  check(kvh, n_head_kv_, "KV head");
  if (k < 0 || k >= opts_.key_tokens) return {};
  const auto& keys = keys_[static_cast<size_t>(layer)];
  const auto it = keys.begin() + (k * n_head_kv_ + kvh) * head_dim_;
  if (std::isnan(*it)) return {};
  return std::vector<float>(it, it + head_dim_);
}

std::vector<float> AttentionStats::mean_key(int64_t layer, int64_t kvh) const {
  check(layer, n_layer_, "layer");
  check(kvh, n_head_kv_, "KV head");
  const int64_t n = key_sum_count_[static_cast<size_t>(layer)];
  if (n == 0) return {};
  std::vector<float> m(static_cast<size_t>(head_dim_));
  const auto& sum = key_sum_[static_cast<size_t>(layer)];
  for (int64_t j = 0; j < head_dim_; ++j)
    m[static_cast<size_t>(j)] =
        static_cast<float>(sum[static_cast<size_t>(kvh * head_dim_ + j)] / static_cast<double>(n));
  return m;
}

}  // namespace spillway::analysis
