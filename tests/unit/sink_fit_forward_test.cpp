// Fitted virtual sinks (nullsink:W,fit=FILE) and the sink decomposition on the tiny models,
// with answers known in closed form:
// - the fit recovers a sink (c, u) from samples made with it;
// - a model whose keys are all zero attends by plain means, so its real sinks are exactly
//   a virtual sink of logit log S whose value is the sinks' mean value: the fit must find
//   that, nullsink:W with it must score what sink:S+W scores, and the decomposition's
//   "keys" and "logit" ablations must agree;
// - the engine's fitted sinks (logits and values, per layer and head) match the naive
//   reference, chunked equals per-token, and a value-less table gives the bits of a
//   constant logit.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "spillway/analysis/sink_fit.h"
#include "spillway/analysis/sinks.h"
#include "spillway/core/error.h"
#include "spillway/kv/virtual_sinks.h"
#include "spillway/model/model.h"
#include "spillway/model/observer.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using analysis::HeadSamples;
using model::Model;
using test::random_tokens;

constexpr double kInf = std::numeric_limits<double>::infinity();

std::unique_ptr<Model> tiny(DType t, bool gemma = false, int64_t n_layer = 2,
                            bool zero_keys = false) {
  test::TinyModelSpec s;
  s.matrix_type = t;
  s.embd_type = t == DType::F32 ? DType::F32 : DType::Q8_0;
  s.n_layer = n_layer;
  if (gemma) {
    s.architecture = "gemma3";
    s.n_layer = 3;
    s.sliding_window = 10;
    s.swa_pattern = 3;
  }
  if (zero_keys) s.zero_tensors = "attn_k.weight";
  const std::string name =
      fmt::format("tiny-{}-{}-{}-{}.gguf", static_cast<int>(t), gemma, n_layer, zero_keys);
  return Model::load(test::write_tiny_model(test::temp_dir(), s, name));
}

std::vector<float> nlls(const Model& m, const std::vector<TokenId>& tokens, const std::string& spec,
                        int64_t chunk) {
  PerplexityOptions o;
  o.policy = kv::PolicySpec(spec);
  o.chunk = chunk;
  o.threads = 2;
  return evaluate_perplexity(m, tokens, o).nll;
}

// Samples made by a sink (c, u): o_t = (1 - pi_t) o_w,t + pi_t u, pi_t = sigmoid(c - lse_t).
HeadSamples samples_of(double c, const std::vector<float>& u, int64_t n, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> ud(0.0, 4.0);
  HeadSamples s;
  s.head_dim = static_cast<int64_t>(u.size());
  for (int64_t t = 0; t < n; ++t) {
    const double lse = ud(rng);
    const double pi = 1 / (1 + std::exp(lse - c));
    s.window_lse.push_back(lse);
    s.sink_lse.push_back(c);
    for (float x : u) {
      const float w = nd(rng);
      s.window.push_back(w);
      s.target.push_back(static_cast<float>((1 - pi) * w + pi * x));
    }
  }
  return s;
}

TEST(SinkFit, RecoversTheSinkItsSamplesWereMadeWith) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> u(8);
  for (float& x : u) x = nd(rng);
  const HeadSamples s = samples_of(1.3, u, 300, 2);
  EXPECT_NEAR(analysis::sink_fit_error(s, 1.3, u), 0.0, 1e-9);
  EXPECT_NEAR(analysis::sink_fit_error_exact_logit(s), analysis::sink_fit_error(s, 1.3), 1e-9);
  const analysis::HeadFit fit = analysis::fit_head_sink(s, true);
  EXPECT_NEAR(fit.logit, 1.3, 1e-4);
  ASSERT_EQ(fit.value.size(), u.size());
  for (size_t i = 0; i < u.size(); ++i) EXPECT_NEAR(fit.value[i], u[i], 1e-4) << i;
  EXPECT_LT(fit.error, 1e-9);
  // The error away from the fit is larger, in c and in u.
  std::vector<float> u2 = fit.value;
  u2[3] += 0.01f;
  EXPECT_GT(analysis::sink_fit_error(s, fit.logit, u2), fit.error);
  EXPECT_GT(analysis::sink_fit_error(s, fit.logit + 0.01, fit.value), fit.error);

  // A value-less sink (u = 0), fitted without values: the logit alone.
  const HeadSamples s0 = samples_of(-0.7, std::vector<float>(8, 0.0f), 300, 3);
  const analysis::HeadFit f0 = analysis::fit_head_sink(s0, false);
  EXPECT_NEAR(f0.logit, -0.7, 1e-4);
  EXPECT_TRUE(f0.value.empty());
  // No sink at all (the targets are the windows'): no sink is fitted.
  const HeadSamples none = samples_of(-kInf, std::vector<float>(8, 0.0f), 100, 4);
  EXPECT_EQ(analysis::fit_head_sink(none, true).logit, -kInf);
  EXPECT_EQ(analysis::fit_head_sink(HeadSamples{}, true).logit, -kInf);
}

// Per layer, the mean of tokens 0..S-1's values, [n_layer][n_head_kv][head_dim]: what a
// zero-key model's sinks contribute.
class SinkValues final : public model::AttentionObserver {
 public:
  SinkValues(const model::ModelConfig& c, int64_t sinks)
      : c_(c), sinks_(sinks), mean_(static_cast<size_t>(c.n_layer * c.n_head_kv * c.head_dim)) {}
  void on_attention(const model::AttentionRecord& r) override {
    const int64_t kvd = c_.n_head_kv * c_.head_dim;
    for (int64_t t = 0; t < r.n_tokens; ++t) {
      if (r.plan->tokens[static_cast<size_t>(t)].stream_index >= sinks_) continue;
      for (int64_t i = 0; i < kvd; ++i)
        mean_[static_cast<size_t>(r.layer * kvd + i)] +=
            r.v_rows[t * kvd + i] / static_cast<double>(sinks_);
    }
  }
  double at(int64_t l, int64_t kvh, int64_t i) const {
    return mean_[static_cast<size_t>((l * c_.n_head_kv + kvh) * c_.head_dim + i)];
  }

 private:
  const model::ModelConfig& c_;
  int64_t sinks_;
  std::vector<double> mean_;
};

TEST(SinkFit, WithZeroKeysTheFitIsTheRealSink) {
  const auto m = tiny(DType::F32, false, 2, true);
  const auto& c = m->config();
  const auto tokens = random_tokens(100, 7);
  analysis::SinkFitOptions o;
  o.policy = kv::PolicySpec("sink:4+16");
  o.chunk = 7;
  o.threads = 2;
  o.calibration = "random tokens";
  const analysis::SinkFitResult r = analysis::fit_virtual_sinks(*m, tokens, o);
  EXPECT_EQ(r.samples, 100 - 19);
  EXPECT_EQ(r.sinks.n_layer, c.n_layer);
  EXPECT_EQ(r.sinks.model_fingerprint, c.fingerprint);
  EXPECT_EQ(r.sinks.fault(), "");
  EXPECT_NE(r.sinks.calibration.find("random tokens under sink:4+16"), std::string::npos);

  SessionOptions so;
  so.policy = kv::PolicySpec("sink:4+16");
  Session s(*m, so);
  SinkValues want(c, 4);
  s.set_observer(&want);
  s.advance(std::span(tokens).first(4));
  const int64_t G = c.n_head / c.n_head_kv;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    for (int64_t h = 0; h < c.n_head; ++h) {
      SCOPED_TRACE(::testing::Message() << "layer " << l << " head " << h);
      const size_t i = static_cast<size_t>(l * c.n_head + h);
      // Every score is 0: the sinks' log-sum-exp is log 4 for every query, frozen or not.
      EXPECT_NEAR(r.sinks.logits[i], std::log(4.0), 1e-4);
      EXPECT_NEAR(r.frozen_logit[i], std::log(4.0), 1e-6);
      EXPECT_NEAR(r.sink_mass[i], 4.0 / 20.0, 1e-6);
      for (int64_t e = 0; e < c.head_dim; ++e)
        EXPECT_NEAR(r.sinks.values[i * static_cast<size_t>(c.head_dim) + e], want.at(l, h / G, e),
                    1e-4);
      EXPECT_LT(r.err_fit[i], 1e-6 * r.err_window[i]);
      EXPECT_NEAR(r.err_exact[i], r.err_frozen[i], 1e-5 * r.err_window[i]);
      EXPECT_LE(r.err_fit[i], r.err_logit[i]);
    }
  }
}

TEST(SinkFit, WithZeroKeysTheFittedSinkScoresWhatTheRealSinksScore) {
  // One layer: the values are the tokens' own, so nullsink:16 and sink:4+16 see the same
  // values; from stream index 20 on (both caches full) every query attends to the same
  // window and the same sink, real or fitted.
  const auto m = tiny(DType::F32, false, 1, true);
  const auto tokens = random_tokens(90, 8);
  analysis::SinkFitOptions o;
  o.policy = kv::PolicySpec("sink:4+16");
  const std::string path = (test::temp_dir() / "zero-keys.sinks").string();
  kv::save_virtual_sinks(analysis::fit_virtual_sinks(*m, tokens, o).sinks, path);
  const auto real = nlls(*m, tokens, "sink:4+16", 9);
  const auto fitted = nlls(*m, tokens, "nullsink:16,fit=" + path, 9);
  const auto window = nlls(*m, tokens, "window:16", 9);
  ASSERT_EQ(real.size(), fitted.size());
  double worst = 0, window_gap = 0;
  for (size_t i = 20; i < real.size(); ++i) {
    worst = std::max(worst, std::abs(double(real[i]) - fitted[i]));
    window_gap = std::max(window_gap, std::abs(double(real[i]) - window[i]));
  }
  EXPECT_LT(worst, 1e-4);
  EXPECT_GT(window_gap, 1e-2);  // without the sink the scores do change
  // Per token equals chunked, bit for bit.
  EXPECT_EQ(fitted, nlls(*m, tokens, "nullsink:16,fit=" + path, 1));
}

// A table for `m` with random logits (a few heads without a sink) and values.
kv::VirtualSinks random_table(const Model& m, bool values, uint64_t seed) {
  const auto& c = m.config();
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd;
  kv::VirtualSinks s;
  s.architecture = c.architecture;
  s.n_layer = c.n_layer;
  s.n_head = c.n_head;
  s.n_head_kv = c.n_head_kv;
  s.head_dim = c.head_dim;
  s.model_fingerprint = c.fingerprint;
  for (int64_t i = 0; i < c.n_layer * c.n_head; ++i)
    s.logits.push_back(i % 5 == 3 ? -std::numeric_limits<float>::infinity() : 1.0f + nd(rng));
  if (values)
    for (int64_t i = 0; i < c.n_layer * c.n_head * c.head_dim; ++i) s.values.push_back(2 * nd(rng));
  return s;
}

TEST(FittedSinks, MatchTheNaiveReference) {
  for (bool gemma : {false, true}) {
    const auto m = tiny(DType::F32, gemma);
    const auto tokens = random_tokens(90, 11);
    const kv::VirtualSinks table = random_table(*m, true, 5);
    const std::string path = (test::temp_dir() / "random.sinks").string();
    kv::save_virtual_sinks(table, path);
    SessionOptions so;
    so.policy = kv::PolicySpec("nullsink:20,fit=" + path);
    so.max_batch = 1;
    Session s(*m, so);
    test::NaiveReference ref(*m, 0, 20, false);
    ref.set_fitted_sinks(&table);
    double worst = 0;
    for (TokenId t : tokens) {
      s.feed(std::span<const TokenId>(&t, 1));
      const std::vector<float> got(s.last_logits(), s.last_logits() + m->config().n_vocab);
      const std::vector<float> want = ref.step(t);
      for (size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(double(got[i]) - want[i]));
    }
    EXPECT_LE(worst, 1e-3) << (gemma ? "gemma3" : "llama");
    // And the values matter: the same logits without them score otherwise.
    kv::VirtualSinks no_values = table;
    no_values.values.clear();
    const std::string path0 = (test::temp_dir() / "random-no-values.sinks").string();
    kv::save_virtual_sinks(no_values, path0);
    EXPECT_NE(nlls(*m, tokens, "nullsink:20,fit=" + path, 16),
              nlls(*m, tokens, "nullsink:20,fit=" + path0, 16));
    EXPECT_EQ(nlls(*m, tokens, "nullsink:20,fit=" + path, 1),
              nlls(*m, tokens, "nullsink:20,fit=" + path, 37));
  }
}

TEST(FittedSinks, AValueLessTableGivesTheBitsOfAConstantLogit) {
  const auto m = tiny(DType::Q4_1);
  const auto tokens = random_tokens(120, 12);
  kv::VirtualSinks table = random_table(*m, false, 6);
  std::fill(table.logits.begin(), table.logits.end(), 0.5f);
  const std::string path = (test::temp_dir() / "const.sinks").string();
  kv::save_virtual_sinks(table, path);
  EXPECT_EQ(nlls(*m, tokens, "nullsink:24,fit=" + path, 16),
            nlls(*m, tokens, "nullsink:24,calib=const:0.5", 16));
}

TEST(SinkFit, ChecksItsInput) {
  const auto m = tiny(DType::F32);
  const auto tokens = random_tokens(40, 1);
  analysis::SinkFitOptions o;
  o.policy = kv::PolicySpec("sink:4+16");
  EXPECT_NO_THROW(analysis::fit_virtual_sinks(*m, std::span(tokens).first(20), o));
  EXPECT_THROW(analysis::fit_virtual_sinks(*m, std::span(tokens).first(19), o), InvalidArgument);
  for (const char* bad : {"window:20", "sink:4+4", "sink:4+16,kv=f16", "full", "nullsink:20"}) {
    o.policy = kv::PolicySpec(bad);
    EXPECT_THROW(analysis::fit_virtual_sinks(*m, tokens, o), InvalidArgument) << bad;
  }
}

// The decomposition: every mode runs, "drop" is what it was, and with zero keys the
// sinks' mean logit is log S, so "logit" is exactly "keys".
TEST(SinkAblation, TheModesTakeTheSinkApart) {
  const auto m = tiny(DType::F32, false, 2, true);
  const auto tokens = random_tokens(80, 3);
  analysis::AblationOptions o;
  o.policy = kv::PolicySpec("sink:4+16");
  o.score_from = 40;
  o.chunk = 8;
  o.per_head = false;
  const analysis::AblationResult drop = analysis::ablate_sinks(*m, tokens, o);
  o.modes = {analysis::SinkAblation::kKeys, analysis::SinkAblation::kDrop,
             analysis::SinkAblation::kValues, analysis::SinkAblation::kLogit};
  const analysis::AblationResult r = analysis::ablate_sinks(*m, tokens, o);
  ASSERT_EQ(r.modes.size(), 4u);
  EXPECT_EQ(r.modes[1].all_heads_delta, drop.all_heads_delta);
  EXPECT_EQ(r.modes[1].layer_delta, drop.layer_delta);
  EXPECT_EQ(r.all_heads_delta, r.modes[0].all_heads_delta);  // the first mode's
  for (double x : r.sink_logit_mean) EXPECT_NEAR(x, std::log(4.0), 1e-6);
  EXPECT_NEAR(r.modes[3].all_heads_delta, r.modes[0].all_heads_delta, 1e-5);
  for (size_t l = 0; l < 2; ++l)
    EXPECT_NEAR(r.modes[3].layer_delta[l], r.modes[0].layer_delta[l], 1e-5);
  // Each of the three changes something, and not the same thing.
  for (size_t i = 0; i < 3; ++i) EXPECT_GT(std::abs(r.modes[i].all_heads_delta), 1e-4);
  EXPECT_GT(std::abs(r.modes[0].all_heads_delta - r.modes[2].all_heads_delta), 1e-4);
  EXPECT_GT(std::abs(r.modes[1].all_heads_delta - r.modes[2].all_heads_delta), 1e-4);

  o.modes = {analysis::SinkAblation::kDrop, analysis::SinkAblation::kDrop};
  EXPECT_THROW(analysis::ablate_sinks(*m, tokens, o), InvalidArgument);
  o.modes = {};
  EXPECT_THROW(analysis::ablate_sinks(*m, tokens, o), InvalidArgument);
  EXPECT_EQ(analysis::parse_sink_ablation("values"), analysis::SinkAblation::kValues);
  EXPECT_THROW(analysis::parse_sink_ablation("value"), InvalidArgument);
}

}  // namespace
}  // namespace spillway
