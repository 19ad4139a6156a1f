#include "spillway/analysis/sink_report.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "spillway/analysis/attention_stats.h"
#include "spillway/core/error.h"
#include "spillway/core/stats.h"
#include "spillway/session/session.h"

namespace spillway::analysis {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

size_t at(int64_t i) {
  return static_cast<size_t>(i);
}

// Records stream[0, n) under `policy` into an AttentionStats keeping `key_tokens` keys.
std::unique_ptr<AttentionStats> record(const model::Model& model, std::span<const TokenId> stream,
                                       const kv::PolicySpec& policy, int64_t n, int64_t key_tokens,
                                       int64_t chunk, ThreadPool* pool) {
  SessionOptions so;
  so.policy = policy;
  so.max_batch = chunk;
  so.max_stream = n;
  Session session(model, so, pool);
  auto stats = std::make_unique<AttentionStats>(model.config(),
                                                AttentionStatsOptions{0, n, true, key_tokens});
  session.set_observer(stats.get());
  session.advance(stream.first(at(n)));
  session.set_observer(nullptr);
  return stats;
}

std::vector<std::pair<int64_t, double>> top_of(const std::vector<double>& v, int64_t n) {
  std::vector<std::pair<int64_t, double>> out;
  for (int64_t k : top_indices(v, n)) out.emplace_back(k, v[at(k)]);
  return out;
}

SinkCorrelations correlations(std::span<const double> delta, std::span<const double> mass,
                              std::span<const double> hidden) {
  SinkCorrelations c;
  for (size_t k = 0; k < delta.size() && k < mass.size(); ++k)
    c.pairs += !std::isnan(delta[k]) && !std::isnan(mass[k]);
  c.delta_vs_mass = spearman(delta, mass);
  c.delta_vs_hidden = spearman(delta, hidden);
  c.mass_vs_hidden = spearman(mass, hidden);
  return c;
}

}  // namespace

double layer_mean(std::span<const double> table, int64_t layer, int64_t n_head) {
  double s = 0;
  int64_t n = 0;
  for (int64_t h = 0; h < n_head; ++h) {
    const double x = table[at(layer * n_head + h)];
    if (!std::isnan(x)) {
      s += x;
      ++n;
    }
  }
  return n ? s / static_cast<double>(n) : kNaN;
}

SinkReport sink_report(const model::Model& model, std::span<const TokenId> stream,
                       const SinkReportOptions& o, ThreadPool* pool) {
  if (!(o.eps > 0 && o.eps <= 1))
    throw InvalidArgument(fmt::format("sink report: eps {} outside (0, 1]", o.eps));
  if (o.tokens < 2)
    throw InvalidArgument(fmt::format("sink report: tokens {} must be >= 2", o.tokens));
  if (o.tokens > static_cast<int64_t>(stream.size()))
    throw InvalidArgument(fmt::format("sink report: {} tokens asked for, the stream has {}",
                                      o.tokens, stream.size()));
  if (o.top < 1 || o.chunk < 1) throw InvalidArgument("sink report: top and chunk must be >= 1");
  if (kv::make_policy(o.policy)->replay_from(0))
    throw InvalidArgument(fmt::format(
        "sink report: policy '{}' replays the window for every token; its attention is not a "
        "stream's",
        o.policy.str()));
  std::unique_ptr<ThreadPool> own;
  if (pool == nullptr) {
    own = std::make_unique<ThreadPool>(o.threads);
    pool = own.get();
  }
  const model::ModelConfig& c = model.config();
  const int64_t L = c.n_layer, H = c.n_head, NKV = c.n_head_kv, N = o.tokens;
  const int64_t T = std::min<int64_t>(64, N);
  const auto stats = record(model, stream, o.policy, N, 16, o.chunk, pool);
  const auto stats64 = record(model, stream, kv::PolicySpec("full"), T, 0, o.chunk, pool);

  SinkReport r;
  r.n_layer = L;
  r.n_head = H;
  r.tokens = N;
  r.first_tokens = T;
  r.eps = o.eps;
  r.alpha1 = sink_scores(*stats, 0);
  r.alpha1_first = sink_scores(*stats64, 0);
  r.sink_rate_stream = sink_rate(r.alpha1, o.eps);
  r.sink_rate_first = sink_rate(r.alpha1_first, o.eps);
  for (int64_t k = 1; k < std::min<int64_t>(8, N); ++k) r.alpha_k.push_back(sink_scores(*stats, k));
  for (int64_t k = 0; k < std::max<int64_t>(1, N / 2); ++k) {
    const std::vector<double> a = sink_scores(*stats, k);
    const auto over = std::count_if(a.begin(), a.end(), [&](double x) { return x > o.eps; });
    if (over > 0) r.detected_sinks.push_back({k, static_cast<int64_t>(over)});
  }
  const auto is_sink = [&](int64_t i) {
    return std::any_of(r.detected_sinks.begin(), r.detected_sinks.end(),
                       [&](const DetectedSink& d) { return d.stream_index == i; });
  };

  for (int64_t l = 0; l < L; ++l) {
    std::vector<double> ss(at(stats->n_keys()), 0.0);
    std::vector<double> rs(stats->queries_by_rank(l).size(), 0.0);
    for (int64_t h = 0; h < H; ++h) {
      const auto& m = stats->mass_by_stream(l, h);
      for (size_t k = 0; k < m.size(); ++k) ss[k] += m[k] / static_cast<double>(H * N);
      const auto& mr = stats->mass_by_rank(l, h);
      for (size_t k = 0; k < mr.size(); ++k) rs[k] += mr[k] / static_cast<double>(H * N);
    }
    std::vector<double> norms;
    for (int64_t i = 0; i < N; ++i) norms.push_back(stats->hidden_norm(l, i));
    SinkLayerReport lr;
    lr.layer = l;
    lr.local_window = c.layers[at(l)].window;
    lr.alpha1_mean = layer_mean(r.alpha1, l, H);
    lr.top_stream = top_of(ss, o.top);
    lr.top_rank = top_of(rs, o.top);
    lr.hidden_norm_median = stats::median(norms);
    lr.first_token_norm_ratio = norms[0] / lr.hidden_norm_median;
    for (const DetectedSink& d : r.detected_sinks)
      if (d.stream_index < N)
        lr.sink_norm_ratio.emplace_back(d.stream_index,
                                        norms[at(d.stream_index)] / lr.hidden_norm_median);
    for (int64_t g = 0; g < NKV; ++g) {
      std::vector<double> other;
      for (int64_t i = 0; i < N; ++i)
        if (!is_sink(i)) other.push_back(stats->value_norm(l, i, g));
      lr.other_value_norm_median += stats::median(other) / static_cast<double>(NKV);
      lr.first_token_value_norm += stats->value_norm(l, 0, g) / static_cast<double>(NKV);
      const auto k0 = stats->key(l, g, 0);
      const auto km = stats->mean_key(l, g);
      lr.key0_cos_mean_key.push_back(k0.empty() || km.empty() ? kNaN : cosine(k0, km));
    }
    r.layers.push_back(std::move(lr));
    r.mass_by_stream.push_back(std::move(ss));
    r.mass_by_rank.push_back(std::move(rs));
  }
  for (int64_t l = 0; l <= L; ++l) {
    std::vector<double> v;
    for (int64_t i = 0; i < N; ++i) v.push_back(stats->hidden_norm(l, i));
    r.hidden_norm.push_back(std::move(v));
  }
  return r;
}

SinkCorrelations head_correlations(const AblationResult& r) {
  if (r.head_delta.empty()) return correlations({}, {}, {});
  std::vector<double> hidden;
  for (int64_t l = 0; l < r.n_layer; ++l)
    for (int64_t h = 0; h < r.n_head; ++h) hidden.push_back(r.sink_hidden_ratio[at(l)]);
  return correlations(r.head_delta, r.sink_mass, hidden);
}

SinkCorrelations layer_correlations(const AblationResult& r) {
  if (r.layer_delta.empty()) return correlations({}, {}, {});
  std::vector<double> mass;
  for (int64_t l = 0; l < r.n_layer; ++l) mass.push_back(layer_mean(r.sink_mass, l, r.n_head));
  return correlations(r.layer_delta, mass, r.sink_hidden_ratio);
}

}  // namespace spillway::analysis
