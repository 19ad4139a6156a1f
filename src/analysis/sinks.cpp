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

const char* sink_ablation_name(SinkAblation a) {
  switch (a) {
    case SinkAblation::kKeys:
      return "keys";
    case SinkAblation::kValues:
      return "values";
    case SinkAblation::kLogit:
      return "logit";
    default:
      return "drop";
  }
}

SinkAblation parse_sink_ablation(std::string_view name) {
  for (SinkAblation a : kSinkAblations)
    if (name == sink_ablation_name(a)) return a;
  throw InvalidArgument(
      fmt::format("unknown sink ablation '{}' (expected drop, keys, values or logit)", name));
}

namespace {

// Edits one layer's softmax: the marked heads ablate their sinks one way.
class SinkEditor final : public model::AttentionObserver {
 public:
  // logits: [n_layer * n_head], the kLogit heads' logits.
  SinkEditor(int64_t n_layer, int64_t n_head, SinkAblation mode, const std::vector<double>& logits)
      : n_head_(n_head), mode_(mode), logits_(logits), edits_(static_cast<size_t>(n_layer)) {}
  void edit_head(int64_t layer, int64_t head) {
    model::AttentionEdit& e = edits_[static_cast<size_t>(layer)];
    e.sinks.resize(static_cast<size_t>(n_head_), model::SinkEdit::kNone);
    const auto i = static_cast<size_t>(layer * n_head_ + head);
    switch (mode_) {
      case SinkAblation::kDrop:
        e.sinks[static_cast<size_t>(head)] = model::SinkEdit::kDrop;
        break;
      case SinkAblation::kKeys:
        e.sinks[static_cast<size_t>(head)] = model::SinkEdit::kKeys;
        break;
      case SinkAblation::kValues:
        e.sinks[static_cast<size_t>(head)] = model::SinkEdit::kValues;
        break;
      case SinkAblation::kLogit:
        // A head that never had sink slots has no mean logit; it has nothing to replace.
        if (std::isnan(logits_[i])) return;
        e.sinks[static_cast<size_t>(head)] = model::SinkEdit::kLogit;
        e.sink_logit.resize(static_cast<size_t>(n_head_), 0.0f);
        e.sink_logit[static_cast<size_t>(head)] = static_cast<float>(logits_[i]);
        break;
    }
  }
  const model::AttentionEdit* edit(int64_t layer) override {
    const auto& e = edits_[static_cast<size_t>(layer)];
    return e.sinks.empty() ? nullptr : &e;
  }

 private:
  int64_t n_head_;
  SinkAblation mode_;
  const std::vector<double>& logits_;
  std::vector<model::AttentionEdit> edits_;
};

// Per head, the log-sum-exp of its scaled scores on the sink slots, summed over the
// recorded queries that have sink slots (lse + log of the sinks' probability), and the
// count of those queries.
class SinkLogitMeter final : public model::AttentionObserver {
 public:
  SinkLogitMeter(int64_t n_layer, int64_t n_head)
      : n_head_(n_head),
        sum_(static_cast<size_t>(n_layer * n_head), 0.0),
        count_(static_cast<size_t>(n_layer), 0) {}
  bool wants_probs(int64_t) override { return true; }
  void on_attention(const model::AttentionRecord& r) override {
    for (int64_t t = 0; t < r.n_tokens; ++t) {
      const kv::TokenPlan& tp = r.plan->tokens[static_cast<size_t>(t)];
      const int64_t span = r.plan->span_size(static_cast<size_t>(t));
      bool any = false;
      for (int64_t h = 0; h < r.n_head; ++h) {
        const float* p = r.probs + r.prob_offset[t] + h * span;
        double mass = 0;
        int64_t k = 0;
        for (int32_t i = tp.range_begin; i < tp.range_end; ++i) {
          const kv::SlotRange& sr = r.plan->ranges[static_cast<size_t>(i)];
          for (int32_t j = sr.begin; j < sr.end; ++j, ++k)
            if (sr.sink) {
              mass += p[k];
              any = true;
            }
        }
        if (!any) break;
        sum_[static_cast<size_t>(r.layer * n_head_ + h)] +=
            r.lse[t * r.n_head + h] + std::log(std::max(mass, 1e-300));
      }
      if (any) ++count_[static_cast<size_t>(r.layer)];
    }
  }
  // [n_layer * n_head] the mean (NaN for a layer without sink slots).
  std::vector<double> means() const {
    std::vector<double> m(sum_.size(), kNaN);
    for (size_t i = 0; i < m.size(); ++i) {
      const int64_t c = count_[i / static_cast<size_t>(n_head_)];
      if (c > 0) m[i] = sum_[i] / static_cast<double>(c);
    }
    return m;
  }

 private:
  int64_t n_head_;
  std::vector<double> sum_;
  std::vector<int64_t> count_;
};

// Hands every call to two observers (the first one's edits).
class Tee final : public model::AttentionObserver {
 public:
  Tee(model::AttentionObserver& a, model::AttentionObserver& b) : a_(a), b_(b) {}
  void on_attach(const kv::Cache& c) override {
    a_.on_attach(c);
    b_.on_attach(c);
  }
  void on_step(const kv::StepPlan& p) override {
    a_.on_step(p);
    b_.on_step(p);
  }
  bool wants_probs(int64_t l) override {
    // Both are asked (neither call is skipped); the records carry probabilities when either
    // wants them.
    const bool wa = a_.wants_probs(l), wb = b_.wants_probs(l);
    return wa || wb;
  }
  void on_attention(const model::AttentionRecord& r) override {
    a_.on_attention(r);
    b_.on_attention(r);
  }
  void on_hidden(int64_t l, const float* x, int64_t n, int64_t d) override {
    a_.on_hidden(l, x, n, d);
    b_.on_hidden(l, x, n, d);
  }
  const model::AttentionEdit* edit(int64_t l) override { return a_.edit(l); }

 private:
  model::AttentionObserver &a_, &b_;
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
  if (o.modes.empty()) throw InvalidArgument("sink ablation: no ablation mode");
  for (size_t i = 0; i < o.modes.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (o.modes[i] == o.modes[j])
        throw InvalidArgument(
            fmt::format("sink ablation: mode '{}' given twice", sink_ablation_name(o.modes[i])));
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
  const int64_t runs = 1 + static_cast<int64_t>(o.modes.size()) *
                               (1 + (o.per_layer ? static_cast<int64_t>(layers.size()) : 0) +
                                (o.per_head ? static_cast<int64_t>(heads.size()) : 0));
  int64_t done_runs = 0;
  auto tick = [&] {
    ++done_runs;
    if (o.progress) o.progress(done_runs, runs);
  };

  // Baseline, with the attention statistics of the scored queries.
  AttentionStatsOptions so_stats;
  so_stats.first = first_query;
  AttentionStats stats(c, so_stats);
  SinkLogitMeter meter(c.n_layer, c.n_head);
  Tee both(stats, meter);
  r.base_nll = run(&both, &r.base_token_nll);
  r.sink_logit_mean = meter.means();
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

  for (SinkAblation mode : o.modes) {
    AblationDeltas d;
    d.mode = mode;
    const auto editor = [&] { return SinkEditor(c.n_layer, c.n_head, mode, r.sink_logit_mean); };
    {
      SinkEditor all = editor();
      for (int64_t l = 0; l < c.n_layer; ++l)
        for (int64_t h = 0; h < c.n_head; ++h) all.edit_head(l, h);
      d.all_heads_delta = run(&all, nullptr) - r.base_nll;
      tick();
    }
    if (o.per_layer) {
      d.layer_delta.assign(static_cast<size_t>(c.n_layer), kNaN);
      for (int64_t l : layers) {
        SinkEditor layer = editor();
        for (int64_t h = 0; h < c.n_head; ++h) layer.edit_head(l, h);
        d.layer_delta[static_cast<size_t>(l)] = run(&layer, nullptr) - r.base_nll;
        tick();
      }
    }
    if (o.per_head) {
      d.head_delta.assign(static_cast<size_t>(c.n_layer * c.n_head), kNaN);
      for (auto [l, h] : heads) {
        SinkEditor one = editor();
        one.edit_head(l, h);
        d.head_delta[static_cast<size_t>(l * c.n_head + h)] = run(&one, nullptr) - r.base_nll;
        tick();
      }
    }
    r.modes.push_back(std::move(d));
  }
  r.all_heads_delta = r.modes[0].all_heads_delta;
  r.layer_delta = r.modes[0].layer_delta;
  r.head_delta = r.modes[0].head_delta;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return r;
}

}  // namespace spillway::analysis
