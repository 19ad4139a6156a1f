// Fitted virtual sinks (nullsink:W,fit=FILE) and the sink decomposition on the tiny models:
// - the engine's fitted sinks (logits and values, per layer and head) match the naive
//   reference, chunked equals per-token, and a value-less table gives the bits of a
//   constant logit;
// - a model whose keys are all zero attends by plain means, so its real sinks' logit is
//   log S for every query and the decomposition's "keys" and "logit" ablations agree.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "spillway/analysis/sinks.h"
#include "spillway/core/error.h"
#include "spillway/kv/virtual_sinks.h"
#include "spillway/model/model.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using model::Model;
using test::random_tokens;

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
