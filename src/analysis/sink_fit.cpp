#include "spillway/analysis/sink_fit.h"

#include <fmt/core.h>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "spillway/core/error.h"
#include "spillway/core/thread_pool.h"
#include "spillway/kv/cache.h"
#include "spillway/model/observer.h"
#include "spillway/session/session.h"

namespace spillway::analysis {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// The ridge on a fitted value, per sample (fit_head_sink).
constexpr double kValueRidge = 1e-8;

// The sink's share of a head's softmax for a sink of logit c against a window of
// log-sum-exp lse_w: sigmoid(c - lse_w), 1 for a window without mass, 0 for no sink.
inline double sink_share(double c, double lse_w) {
  if (lse_w == -kInf) return c == -kInf ? 0.0 : 1.0;
  return 1.0 / (1.0 + std::exp(lse_w - c));
}

// Records the samples of every head from the attention of a sink:S+W stream: each query
// from stream index `first` on is one sample per head, and the queries S..W-1 give the
// logit nullsink's calib=first:S would freeze.
class SampleRecorder final : public model::AttentionObserver {
 public:
  SampleRecorder(const model::ModelConfig& c, int64_t sinks, int64_t window, int64_t first,
                 int64_t n_samples)
      : c_(c),
        sinks_(sinks),
        window_(window),
        first_(first),
        n_samples_(n_samples),
        heads_(static_cast<size_t>(c.n_layer * c.n_head)),
        frozen_sum_(heads_.size(), 0.0),
        frozen_count_(static_cast<size_t>(c.n_layer), 0),
        mass_sum_(heads_.size(), 0.0) {}

  void on_attach(const kv::Cache& cache) override {
    cache_ = &cache;
    governed_.assign(static_cast<size_t>(c_.n_layer), false);
    for (int64_t l : cache.group_layers(0)) governed_[static_cast<size_t>(l)] = true;
  }
  void on_step(const kv::StepPlan& plan) override {
    records_ = false;
    for (const kv::TokenPlan& tp : plan.groups[0].tokens) records_ |= wanted(tp.stream_index);
  }
  bool wants_probs(int64_t) override { return records_; }

  void on_attention(const model::AttentionRecord& r) override {
    // Layers with a native window of their own keep no sinks.
    if (!r.probs || !governed_[static_cast<size_t>(r.layer)]) return;
    const kv::KvStorage& kv = cache_->storage();
    const int64_t d = r.head_dim, H = r.n_head, G = H / r.n_head_kv;
    std::vector<double> all(static_cast<size_t>(d)), win(static_cast<size_t>(d));
    for (int64_t t = 0; t < r.n_tokens; ++t) {
      const kv::TokenPlan& tp = r.plan->tokens[static_cast<size_t>(t)];
      const int64_t n = tp.stream_index;
      if (!wanted(n)) continue;
      const int64_t span = r.plan->span_size(static_cast<size_t>(t));
      const bool sample = n >= first_;
      if (n < window_) ++frozen_count_[static_cast<size_t>(r.layer)];
      for (int64_t h = 0; h < H; ++h) {
        const float* p = r.probs + r.prob_offset[t] + h * span;
        const auto* vbase = static_cast<const float*>(kv.v(r.layer, h / G));
        double ps = 0, pw = 0;
        std::fill(all.begin(), all.end(), 0.0);
        std::fill(win.begin(), win.end(), 0.0);
        int64_t k = 0;
        for (int32_t i = tp.range_begin; i < tp.range_end; ++i) {
          const kv::SlotRange& sr = r.plan->ranges[static_cast<size_t>(i)];
          for (int32_t j = sr.begin; j < sr.end; ++j, ++k) {
            // sink:S+W keeps token m < S in slot m, before the cache is full (one range
            // from slot 0, not marked as sinks) and after; the window's ring starts at S.
            const bool sink = j < sinks_;
            const double pk = p[k];
            (sink ? ps : pw) += pk;
            if (!sample || pk == 0) continue;
            const float* v = vbase + static_cast<int64_t>(j) * d;
            for (int64_t e = 0; e < d; ++e) all[e] += pk * v[e];
            if (!sink)
              for (int64_t e = 0; e < d; ++e) win[e] += pk * v[e];
          }
        }
        const double lse = r.lse[t * H + h];
        const double sink_lse = ps > 0 ? lse + std::log(ps) : -kInf;
        const size_t hi = static_cast<size_t>(r.layer * H + h);
        if (n < window_) frozen_sum_[hi] += lse + std::log(std::max(ps, 1e-300));
        if (!sample) continue;
        HeadSamples& s = heads_[hi];
        if (s.window_lse.empty()) {
          s.head_dim = d;
          s.target.assign(static_cast<size_t>(n_samples_ * d), 0.0f);
          s.window.assign(static_cast<size_t>(n_samples_ * d), 0.0f);
          s.window_lse.assign(static_cast<size_t>(n_samples_), -kInf);
          s.sink_lse.assign(static_cast<size_t>(n_samples_), -kInf);
        }
        const int64_t i = n - first_;
        for (int64_t e = 0; e < d; ++e) {
          s.target[static_cast<size_t>(i * d + e)] = static_cast<float>(all[e]);
          s.window[static_cast<size_t>(i * d + e)] = pw > 0 ? static_cast<float>(win[e] / pw) : 0;
        }
        s.window_lse[static_cast<size_t>(i)] = pw > 0 ? lse + std::log(pw) : -kInf;
        s.sink_lse[static_cast<size_t>(i)] = sink_lse;
        mass_sum_[hi] += ps;
      }
    }
  }

  std::vector<HeadSamples>& heads() { return heads_; }
  // The frozen logit of each head (NaN when no query S..W-1 had sinks).
  double frozen_logit(size_t head) const {
    const int64_t c = frozen_count_[head / static_cast<size_t>(c_.n_head)];
    return c > 0 ? frozen_sum_[head] / static_cast<double>(c) : kNaN;
  }
  double mass_sum(size_t head) const { return mass_sum_[head]; }

 private:
  // Calibration queries (S..W-1) and samples (first on).
  bool wanted(int64_t n) const { return (n >= sinks_ && n < window_) || n >= first_; }

  const model::ModelConfig& c_;
  int64_t sinks_, window_, first_, n_samples_;
  const kv::Cache* cache_ = nullptr;
  std::vector<bool> governed_;  // [n_layer] the layers the sink policy governs
  bool records_ = false;
  std::vector<HeadSamples> heads_;  // [n_layer * n_head]
  std::vector<double> frozen_sum_;
  std::vector<int64_t> frozen_count_;  // [n_layer] queries per head
  std::vector<double> mass_sum_;
};

}  // namespace

double sink_fit_error(const HeadSamples& s, double c, std::span<const float> u) {
  const int64_t d = s.head_dim;
  double err = 0;
  for (int64_t t = 0; t < s.size(); ++t) {
    const double pi = sink_share(c, s.window_lse[static_cast<size_t>(t)]);
    for (int64_t e = 0; e < d; ++e) {
      const auto i = static_cast<size_t>(t * d + e);
      const double o = (1 - pi) * s.window[i] + (u.empty() ? 0.0 : pi * u[static_cast<size_t>(e)]);
      err += (s.target[i] - o) * (s.target[i] - o);
    }
  }
  return err;
}

double sink_fit_error_exact_logit(const HeadSamples& s) {
  const int64_t d = s.head_dim;
  double err = 0;
  for (int64_t t = 0; t < s.size(); ++t) {
    const double pi =
        sink_share(s.sink_lse[static_cast<size_t>(t)], s.window_lse[static_cast<size_t>(t)]);
    for (int64_t e = 0; e < d; ++e) {
      const auto i = static_cast<size_t>(t * d + e);
      const double x = s.target[i] - (1 - pi) * s.window[i];
      err += x * x;
    }
  }
  return err;
}

// GCC 12 reports -Wmaybe-uninitialized from inside its own AVX-512 intrinsics once
// Eigen's products are inlined in a -march=native build (see spearman() in sinks.cpp): a
// false positive of that compiler, silenced for this function only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
HeadFit fit_head_sink(const HeadSamples& s, bool values) {
  HeadFit f;
  f.logit = -kInf;
  const int64_t n = s.size(), d = s.head_dim;
  if (n == 0) return f;
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::MatrixXd T = Eigen::Map<const RowMajor>(s.target.data(), n, d).cast<double>();
  const Eigen::MatrixXd Wn = Eigen::Map<const RowMajor>(s.window.data(), n, d).cast<double>();
  const Eigen::Map<const Eigen::ArrayXd> lse(s.window_lse.data(), n);
  const double err_window = (T - Wn).squaredNorm();
  f.error = err_window;

  // The objective at c: the squared error plus ridge |u|^2, with u at its optimum for that
  // c when fitting values, u = sum pi r / (sum pi^2 + ridge). With 1e-8 per sample,
  // ridge / sum pi^2 = 1e-8 / mean(pi^2): 1e-4 for a sink whose share is about 1 %, nothing
  // to speak of. It matters for shares under about 1e-4, where the least-squares u grows as
  // 1 / pi: without it a head can fit a sink of vanishing share and a value thousands of
  // times any value's size, exact on the calibration stream and wild on another
  // (SmolLM2's heads 0:6 and 0:7 did, |u| 40,000 and 24,000).
  const double ridge = kValueRidge * static_cast<double>(n);
  Eigen::ArrayXd pi(n);
  Eigen::VectorXd u(d);
  const auto objective_at = [&](double c, Eigen::VectorXd* u_out) {
    for (int64_t t = 0; t < n; ++t) pi[t] = sink_share(c, lse[t]);
    Eigen::MatrixXd R = T - (1.0 - pi).matrix().asDiagonal() * Wn;
    const double pp = pi.square().sum();
    if (!values || pp <= 0) {
      if (u_out) u_out->setZero();
      return R.squaredNorm();
    }
    const Eigen::VectorXd best = R.transpose() * pi.matrix() / (pp + ridge);
    if (u_out) *u_out = best;
    R.noalias() -= pi.matrix() * best.transpose();
    return R.squaredNorm() + ridge * best.squaredNorm();
  };

  // The scan covers the windows' log-sum-exps with a margin where the sink's share goes
  // from under 1e-7 of the window's to over 1e7 times it: past those ends the error no
  // longer changes.
  double lo = kInf, hi = -kInf;
  for (int64_t t = 0; t < n; ++t)
    if (lse[t] > -kInf) {
      lo = std::min(lo, lse[t]);
      hi = std::max(hi, lse[t]);
    }
  if (lo == kInf) lo = hi = 0;  // no window had mass: any finite logit takes everything
  lo -= 16;
  hi += 16;
  constexpr int kScan = 65;
  double best_c = lo, best_err = kInf;
  int best_k = 0;
  for (int k = 0; k < kScan; ++k) {
    const double c = lo + (hi - lo) * k / (kScan - 1);
    const double e = objective_at(c, nullptr);
    if (e < best_err) {
      best_err = e;
      best_c = c;
      best_k = k;
    }
  }
  // Golden-section search between the scan's neighbours of the best point.
  const double step = (hi - lo) / (kScan - 1);
  double a = best_k > 0 ? best_c - step : best_c, b = best_k < kScan - 1 ? best_c + step : best_c;
  const double phi = (std::sqrt(5.0) - 1) / 2;
  double x1 = b - phi * (b - a), x2 = a + phi * (b - a);
  double e1 = objective_at(x1, nullptr), e2 = objective_at(x2, nullptr);
  for (int it = 0; it < 60 && b - a > 1e-9; ++it) {
    if (e1 < e2) {
      b = x2;
      x2 = x1;
      e2 = e1;
      x1 = b - phi * (b - a);
      e1 = objective_at(x1, nullptr);
    } else {
      a = x1;
      x1 = x2;
      e1 = e2;
      x2 = a + phi * (b - a);
      e2 = objective_at(x2, nullptr);
    }
  }
  double c = e1 < e2 ? x1 : x2;
  double e = objective_at(c, &u);
  if (best_err < e) {
    c = best_c;
    e = objective_at(c, &u);
  }
  if (!(e < err_window)) return f;  // no sink does better than none
  f.logit = c;
  f.error = e - (values ? ridge * u.squaredNorm() : 0.0);
  if (values) f.value.assign(u.data(), u.data() + d);
  return f;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

SinkFitResult fit_virtual_sinks(const model::Model& model, std::span<const TokenId> tokens,
                                const SinkFitOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  const model::ModelConfig& c = model.config();
  const auto probe = kv::make_policy(o.policy);
  const int64_t S = probe->n_sinks();
  if (S < 1 || !probe->capacity() || probe->replay_from(0) || o.policy.kind() != "sink")
    throw InvalidArgument(fmt::format(
        "fitting virtual sinks needs the real sinks to imitate, a sink:S+W with S >= 1; got '{}'",
        o.policy.str()));
  const int64_t W = *probe->capacity() - S;
  if (W <= S)
    throw InvalidArgument(fmt::format(
        "fitting virtual sinks under '{}': the window must be longer than the sinks (the "
        "frozen logit it reports averages queries S..W-1)",
        o.policy.str()));
  if (o.policy.kv_type() != DType::F32)
    throw InvalidArgument(fmt::format(
        "fitting virtual sinks under '{}': the fit reads the cached values, which must be f32",
        o.policy.str()));
  if (o.chunk < 1) throw InvalidArgument("fitting virtual sinks: chunk must be >= 1");
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t first = S + W - 1;  // the first query with a full window
  if (n <= first)
    throw InvalidArgument(fmt::format(
        "fitting virtual sinks under '{}' needs more than {} tokens (the cache full, then the "
        "queries fitted on); the stream has {}",
        o.policy.str(), first, n));

  SessionOptions so;
  so.policy = o.policy;
  so.max_batch = o.chunk;
  so.threads = o.threads;
  Session session(model, so);
  SampleRecorder rec(c, S, W, first, n - first);
  session.set_observer(&rec);
  for (int64_t done = 0; done < n;) {
    const int64_t count = std::min(o.chunk, n - done);
    session.advance(tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(count)));
    done += count;
    if (o.progress) o.progress(done, n);
  }
  session.set_observer(nullptr);

  SinkFitResult r;
  r.samples = n - first;
  kv::VirtualSinks& vs = r.sinks;
  vs.architecture = c.architecture;
  vs.model_name = c.name;
  vs.n_layer = c.n_layer;
  vs.n_head = c.n_head;
  vs.n_head_kv = c.n_head_kv;
  vs.head_dim = c.head_dim;
  vs.model_fingerprint = c.fingerprint;
  vs.calibration = fmt::format("{} under {}, {} queries fitted{}", o.calibration, o.policy.str(),
                               r.samples, o.values ? ", logits and values" : ", logits only");
  if (vs.calibration.size() > kv::kMaxVirtualSinkText)
    vs.calibration.resize(kv::kMaxVirtualSinkText);
  const size_t heads = static_cast<size_t>(c.n_layer * c.n_head);
  vs.logits.assign(heads, -std::numeric_limits<float>::infinity());
  if (o.values) vs.values.assign(heads * static_cast<size_t>(c.head_dim), 0.0f);
  for (auto* v : {&r.sink_mass, &r.frozen_logit, &r.err_window, &r.err_exact, &r.err_frozen,
                  &r.err_logit, &r.err_fit, &r.target})
    v->assign(heads, kNaN);

  std::vector<HeadSamples>& samples = rec.heads();
  ThreadPool pool(o.threads);
  pool.parallel_for(static_cast<int64_t>(heads), 1, [&](int64_t h0, int64_t h1) {
    for (int64_t hh = h0; hh < h1; ++hh) {
      const auto h = static_cast<size_t>(hh);
      const HeadSamples& s = samples[h];
      if (s.size() == 0) continue;  // no sink slots in this layer
      r.sink_mass[h] = rec.mass_sum(h) / static_cast<double>(s.size());
      r.frozen_logit[h] = rec.frozen_logit(h);
      r.err_window[h] = sink_fit_error(s, -kInf);
      r.err_exact[h] = sink_fit_error_exact_logit(s);
      r.err_frozen[h] = std::isnan(r.frozen_logit[h]) ? kNaN : sink_fit_error(s, r.frozen_logit[h]);
      double t2 = 0;
      for (float x : s.target) t2 += static_cast<double>(x) * x;
      r.target[h] = t2;
      const HeadFit logit = fit_head_sink(s, false);
      r.err_logit[h] = logit.error;
      const HeadFit fit = o.values ? fit_head_sink(s, true) : logit;
      r.err_fit[h] = fit.error;
      vs.logits[h] = static_cast<float>(fit.logit);
      if (o.values && !fit.value.empty())
        std::copy(fit.value.begin(), fit.value.end(),
                  vs.values.begin() + static_cast<std::ptrdiff_t>(h * c.head_dim));
    }
  });
  // A logit or value that float cannot hold (a degenerate head) is no fit: the head gets
  // no sink rather than a file the loader refuses.
  for (size_t h = 0; h < heads; ++h) {
    bool finite = std::isfinite(vs.logits[h]);
    for (int64_t e = 0; o.values && finite && e < c.head_dim; ++e)
      finite = std::isfinite(vs.values[h * static_cast<size_t>(c.head_dim) + e]);
    if (!finite && vs.logits[h] != -std::numeric_limits<float>::infinity()) {
      vs.logits[h] = -std::numeric_limits<float>::infinity();
      if (o.values)
        std::fill_n(vs.values.begin() + static_cast<std::ptrdiff_t>(h * c.head_dim), c.head_dim,
                    0.0f);
      r.err_fit[h] = r.err_window[h];
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return r;
}

}  // namespace spillway::analysis
