#include "spillway/analysis/sinks.h"

#include <fmt/core.h>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "spillway/core/error.h"
#include "spillway/core/stats.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"

namespace spillway::analysis {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

std::vector<double> sink_scores(const AttentionStats& stats, int64_t k) {
  std::vector<double> out(static_cast<size_t>(stats.n_layer() * stats.n_head()));
  for (int64_t l = 0; l < stats.n_layer(); ++l)
    for (int64_t h = 0; h < stats.n_head(); ++h)
      out[static_cast<size_t>(l * stats.n_head() + h)] = stats.alpha(l, h, k);
  return out;
}

double sink_rate(std::span<const double> scores, double eps) {
  if (!(eps > 0 && eps <= 1))
    throw InvalidArgument(fmt::format("sink rate: eps {} outside (0, 1]", eps));
  if (scores.empty()) return kNaN;
  int64_t n = 0;
  for (double s : scores) n += s > eps;
  return 100.0 * static_cast<double>(n) / static_cast<double>(scores.size());
}

std::vector<int64_t> top_indices(std::span<const double> values, int64_t n) {
  std::vector<int64_t> idx(values.size());
  std::iota(idx.begin(), idx.end(), 0);
  const auto key = [&](int64_t i) {
    const double v = values[static_cast<size_t>(i)];
    return std::isnan(v) ? -std::numeric_limits<double>::infinity() : v;
  };
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return key(a) > key(b); });
  idx.resize(static_cast<size_t>(std::clamp<int64_t>(n, 0, static_cast<int64_t>(idx.size()))));
  return idx;
}

std::vector<double> ranks(std::span<const double> values) {
  // NaN has no place in an order (and would break the sort's ordering): it gets rank NaN,
  // and the other values are ranked among themselves.
  std::vector<size_t> order;
  order.reserve(values.size());
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isnan(values[i])) order.push_back(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> r(values.size(), kNaN);
  const size_t n = order.size();
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && values[order[j + 1]] == values[order[i]]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j) + 1.0;  // ranks i+1 .. j+1
    for (size_t k = i; k <= j; ++k) r[order[k]] = avg;
    i = j + 1;
  }
  return r;
}

// GCC 12 reports -Wmaybe-uninitialized from inside its own AVX-512 intrinsics (which start
// from _mm512_undefined_pd(), a self-initialised variable) once Eigen's reductions are
// inlined here in a -march=native build on an AVX-512 CPU: a false positive of that
// compiler, silenced for this function only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
double spearman(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size()) return kNaN;
  std::vector<double> fa, fb;  // the pairs without a NaN
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) continue;
    fa.push_back(a[i]);
    fb.push_back(b[i]);
  }
  if (fa.size() < 2) return kNaN;
  const std::vector<double> ra = ranks(fa), rb = ranks(fb);
  const Eigen::Map<const Eigen::VectorXd> x(ra.data(), static_cast<Eigen::Index>(ra.size()));
  const Eigen::Map<const Eigen::VectorXd> y(rb.data(), static_cast<Eigen::Index>(rb.size()));
  const Eigen::VectorXd xc = x.array() - x.mean();
  const Eigen::VectorXd yc = y.array() - y.mean();
  const double den = xc.norm() * yc.norm();
  return den > 0 ? xc.dot(yc) / den : kNaN;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

double cosine(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size() || a.empty()) return kNaN;
  const Eigen::Map<const Eigen::VectorXf> x(a.data(), static_cast<Eigen::Index>(a.size()));
  const Eigen::Map<const Eigen::VectorXf> y(b.data(), static_cast<Eigen::Index>(b.size()));
  const double den = static_cast<double>(x.norm()) * static_cast<double>(y.norm());
  return den > 0 ? static_cast<double>(x.dot(y)) / den : kNaN;
}

namespace {

// Edits one layer's softmax: the marked heads leave out their sink slots.
class SinkDropper final : public model::AttentionObserver {
 public:
  SinkDropper(int64_t n_layer, int64_t n_head)
      : n_head_(n_head), edits_(static_cast<size_t>(n_layer)) {}
  void drop(int64_t layer, int64_t head) {
    auto& e = edits_[static_cast<size_t>(layer)].drop_sinks;
    e.resize(static_cast<size_t>(n_head_), 0);
    e[static_cast<size_t>(head)] = 1;
  }
  const model::AttentionEdit* edit(int64_t layer) override {
    const auto& e = edits_[static_cast<size_t>(layer)];
    return e.drop_sinks.empty() ? nullptr : &e;
  }

 private:
  int64_t n_head_;
  std::vector<model::AttentionEdit> edits_;
};

}  // namespace

AblationResult ablate_sinks(const model::Model& model, std::span<const TokenId> tokens,
                            const AblationOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  const model::ModelConfig& c = model.config();
  const auto probe = kv::make_policy(o.policy);
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (probe->n_sinks() < 1 || !probe->capacity() || probe->replay_from(0))
    throw InvalidArgument(fmt::format(
        "sink ablation needs a policy that keeps sink tokens (sink:S+W with S >= 1), got '{}'",
        o.policy.str()));
  const int64_t cap = *probe->capacity();
  if (o.score_from - 1 < cap || o.score_from >= n)
    throw InvalidArgument(fmt::format(
        "sink ablation under '{}': the scored range must start after the window is full (score "
        "from >= {}) and leave at least one target (< {}); got score from {} with {} tokens",
        o.policy.str(), cap + 1, n, o.score_from, n));
  if (o.chunk < 1) throw InvalidArgument("sink ablation: chunk must be >= 1");
  for (int64_t l : o.layers)
    if (l < 0 || l >= c.n_layer)
      throw InvalidArgument(fmt::format("sink ablation: layer {} outside [0, {})", l, c.n_layer));
  for (auto [l, h] : o.heads)
    if (l < 0 || l >= c.n_layer || h < 0 || h >= c.n_head)
      throw InvalidArgument(
          fmt::format("sink ablation: head {}:{} outside layers [0, {}) x heads [0, {})", l, h,
                      c.n_layer, c.n_head));
  std::vector<int64_t> layers = o.layers;
  if (layers.empty())
    for (int64_t l = 0; l < c.n_layer; ++l) layers.push_back(l);
  std::vector<std::pair<int64_t, int64_t>> heads = o.heads;
  if (heads.empty())
    for (int64_t l = 0; l < c.n_layer; ++l)
      for (int64_t h = 0; h < c.n_head; ++h) heads.emplace_back(l, h);

  SessionOptions so;
  so.policy = o.policy;
  so.max_batch = o.chunk;
  so.threads = o.threads;
  Session session(model, so);
  // The cache up to the first scored query (stream index score_from - 1), once.
  const int64_t first_query = o.score_from - 1;
  for (int64_t done = 0; done < first_query;) {
    const int64_t count = std::min(o.chunk, first_query - done);
    session.advance(tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(count)));
    done += count;
  }
  const auto start = session.checkpoint();
  const int64_t n_vocab = c.n_vocab;
  const std::span<const TokenId> queries =
      tokens.subspan(static_cast<size_t>(first_query), static_cast<size_t>(n - 1 - first_query));
  auto run = [&](model::AttentionObserver* obs, std::vector<float>* per_token) {
    session.restore(*start);
    session.set_observer(obs);
    double total = 0;
    session.feed(queries, [&](int64_t i, const float* logits) {
      const double v = token_nll(logits, n_vocab, tokens[static_cast<size_t>(i + 1)]);
      if (per_token) per_token->push_back(static_cast<float>(v));
      total += v;
      return true;
    });
    session.set_observer(nullptr);
    return total / static_cast<double>(queries.size());
  };

  AblationResult r;
  r.n_layer = c.n_layer;
  r.n_head = c.n_head;
  r.scored = static_cast<int64_t>(queries.size());
  const int64_t runs = 2 + (o.per_layer ? static_cast<int64_t>(layers.size()) : 0) +
                       (o.per_head ? static_cast<int64_t>(heads.size()) : 0);
  int64_t done_runs = 0;
  auto tick = [&] {
    ++done_runs;
    if (o.progress) o.progress(done_runs, runs);
  };

  // Baseline, with the attention statistics of the scored queries.
  AttentionStatsOptions so_stats;
  so_stats.first = first_query;
  AttentionStats stats(c, so_stats);
  r.base_nll = run(&stats, &r.base_token_nll);
  tick();
  r.sink_mass.resize(static_cast<size_t>(c.n_layer * c.n_head));
  r.sink_hidden_ratio.resize(static_cast<size_t>(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const int64_t q = stats.sink_range_queries(l);
    for (int64_t h = 0; h < c.n_head; ++h)
      r.sink_mass[static_cast<size_t>(l * c.n_head + h)] =
          q > 0 ? stats.sink_range_mass(l, h) / static_cast<double>(q) : kNaN;
  }
  // The sink's hidden norm: stream index 0 is not among the scored queries, so its
  // residual stream comes from a short run over the start of the stream.
  {
    SessionOptions so0 = so;
    so0.policy = kv::PolicySpec("full");
    Session s0(model, so0);
    AttentionStatsOptions ao;
    ao.attention = false;
    AttentionStats head_stats(c, ao);
    s0.set_observer(&head_stats);
    const int64_t m = std::min<int64_t>(n, 64);
    s0.advance(tokens.first(static_cast<size_t>(m)));
    for (int64_t l = 0; l < c.n_layer; ++l) {
      std::vector<double> norms;
      for (int64_t i = 0; i < m; ++i) norms.push_back(head_stats.hidden_norm(l, i));
      r.sink_hidden_ratio[static_cast<size_t>(l)] = norms[0] / spillway::stats::median(norms);
    }
  }
  bool any_sink = false;
  for (int64_t l = 0; l < c.n_layer; ++l) any_sink |= stats.sink_range_queries(l) > 0;
  if (!any_sink)
    throw InvalidArgument(
        fmt::format("sink ablation: no scored query of '{}' had sink slots", o.policy.str()));

  {
    SinkDropper all(c.n_layer, c.n_head);
    for (int64_t l = 0; l < c.n_layer; ++l)
      for (int64_t h = 0; h < c.n_head; ++h) all.drop(l, h);
    r.all_heads_delta = run(&all, nullptr) - r.base_nll;
    tick();
  }
  if (o.per_layer) {
    r.layer_delta.assign(static_cast<size_t>(c.n_layer), kNaN);
    for (int64_t l : layers) {
      SinkDropper layer(c.n_layer, c.n_head);
      for (int64_t h = 0; h < c.n_head; ++h) layer.drop(l, h);
      r.layer_delta[static_cast<size_t>(l)] = run(&layer, nullptr) - r.base_nll;
      tick();
    }
  }
  if (o.per_head) {
    r.head_delta.assign(static_cast<size_t>(c.n_layer * c.n_head), kNaN);
    for (auto [l, h] : heads) {
      SinkDropper one(c.n_layer, c.n_head);
      one.drop(l, h);
      r.head_delta[static_cast<size_t>(l * c.n_head + h)] = run(&one, nullptr) - r.base_nll;
      tick();
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return r;
}

}  // namespace spillway::analysis
