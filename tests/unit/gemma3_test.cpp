// Gemma 3 on a tiny random model: the local/global layer pattern from metadata, per-layer
// caches (local layers keep their window under every policy, or follow the policy with
// local=policy) against the naive rotate-every-step reference, chunked == per-token,
// prefill == decode, and load errors.
#include <gtest/gtest.h>

#include <random>

#include "model/gemma3/gemma3.h"
#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using model::Model;

// 4 layers, window 12, a period of 2: layers 0 and 2 local, 1 and 3 global. head_dim 24
// differs from n_embd / n_head (the key_length path); GQA 4 / 2.
test::TinyModelSpec gemma_spec(DType matrices) {
  test::TinyModelSpec s;
  s.architecture = "gemma3";
  s.n_layer = 4;
  s.n_embd = 64;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.head_dim = 32;
  s.n_ff = 96;
  s.sliding_window = 12;
  s.swa_pattern = 2;
  s.rope_base = 1000000.0f;
  s.rope_base_local = 10000.0f;
  s.matrix_type = matrices;
  s.embd_type = matrices == DType::F32 ? DType::F32 : DType::Q8_0;
  return s;
}

using test::random_tokens;

std::vector<std::vector<float>> session_logits(const Model& m, const std::string& spec,
                                               const std::vector<TokenId>& tokens, int64_t chunk,
                                               int threads = 1) {
  SessionOptions so;
  so.policy = kv::PolicySpec(spec);
  so.max_batch = chunk;
  so.threads = threads;
  Session s(m, so);
  std::vector<std::vector<float>> out;
  const int64_t nv = m.config().n_vocab;
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(chunk)) {
    const size_t cnt = std::min(tokens.size() - i, static_cast<size_t>(chunk));
    s.feed(std::span(tokens).subspan(i, cnt), [&](int64_t, const float* l) {
      out.emplace_back(l, l + nv);
      return true;
    });
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
  return d;
}

TEST(Gemma3, ConfigReadsTheLayerPatternAndScales) {
  auto m = Model::load(test::write_tiny_model(test::temp_dir(), gemma_spec(DType::Q8_0)));
  const auto& c = m->config();
  EXPECT_EQ(c.architecture, "gemma3");
  EXPECT_EQ(c.head_dim, 32);
  ASSERT_EQ(c.layers.size(), 4u);
  EXPECT_EQ(c.layers[0].window, 12);
  EXPECT_EQ(c.layers[1].window, 0);
  EXPECT_EQ(c.layers[2].window, 12);
  EXPECT_EQ(c.layers[3].window, 0);
  EXPECT_EQ(c.n_local_layers(), 2);
  const auto& g = dynamic_cast<const model::gemma3::Gemma3Model&>(*m);
  EXPECT_FLOAT_EQ(g.gemma_config().attn_scale, 1.0f / std::sqrt(32.0f));
  EXPECT_FLOAT_EQ(g.gemma_config().embd_scale, 8.0f);
  EXPECT_EQ(g.rope(0).style, ops::RopeStyle::kHalves);
  EXPECT_DOUBLE_EQ(g.rope(0).inv_freq[1], std::pow(10000.0, -2.0 / 32));
  EXPECT_DOUBLE_EQ(g.rope(1).inv_freq[1], std::pow(1000000.0, -2.0 / 32));

  // Without a pattern key the architecture's period of 6 applies: layer 5 is global.
  auto spec = gemma_spec(DType::Q8_0);
  spec.n_layer = 7;
  spec.swa_pattern = 0;
  auto m6 = Model::load(test::write_tiny_model(test::temp_dir(), spec));
  for (int64_t l = 0; l < 7; ++l)
    EXPECT_EQ(m6->config().layers[static_cast<size_t>(l)].window, l == 5 ? 0 : 12) << l;
}

struct GemmaCase {
  std::string spec;
  int64_t sinks, window;  // policy span of the governed layers; window < 0: full
  bool local_native;
  int64_t tokens;
};

TEST(Gemma3, PerLayerCachesMatchTheNaiveReference) {
  auto m = Model::load(test::write_tiny_model(test::temp_dir(), gemma_spec(DType::F32)));
  for (const GemmaCase& gc :
       {GemmaCase{"full", 0, -1, true, 120}, GemmaCase{"sink:2+20", 2, 20, true, 400},
        GemmaCase{"window:20", 0, 20, true, 400}, GemmaCase{"sink:2+8", 2, 8, true, 300},
        GemmaCase{"sink:2+20,local=policy", 2, 20, false, 300},
        GemmaCase{"full,local=policy", 0, -1, false, 100}}) {
    const auto tokens = random_tokens(gc.tokens, 17);
    test::NaiveReference ref(*m, gc.sinks, gc.window, false, gc.local_native);
    const auto got = session_logits(*m, gc.spec, tokens, 1);
    const auto got_chunked = session_logits(*m, gc.spec, tokens, 13, 2);
    double worst = 0, worst_chunked = 0;
    for (size_t n = 0; n < tokens.size(); ++n) {
      const auto want = ref.step(tokens[n]);
      worst = std::max(worst, max_abs_diff(got[n], want));
      worst_chunked = std::max(worst_chunked, max_abs_diff(got_chunked[n], want));
    }
    EXPECT_LE(worst, 1e-3) << gc.spec;
    EXPECT_LE(worst_chunked, 1e-3) << gc.spec << " chunked";
  }
}

TEST(Gemma3, LocalLayersMatterAndTheirWindowHolds) {
  auto m = Model::load(test::write_tiny_model(test::temp_dir(), gemma_spec(DType::Q8_0)));
  const auto tokens = random_tokens(80, 3);
  // Native local windows differ from local layers under `full`.
  const auto native = session_logits(*m, "full", tokens, 16);
  const auto policy = session_logits(*m, "full,local=policy", tokens, 16);
  EXPECT_EQ(native[10], policy[10]);  // within the window: the same
  EXPECT_GT(max_abs_diff(native[70], policy[70]), 1e-4);
}

TEST(Gemma3, ChunkedPerplexityEqualsPerTokenAndPrefillEqualsDecode) {
  auto m = Model::load(test::write_tiny_model(test::temp_dir(), gemma_spec(DType::Q4_0)));
  const auto tokens = random_tokens(300, 9);
  for (const char* spec :
       {"full", "window:24", "sink:2+22", "recompute:16", "sink:2+22,local=policy"}) {
    PerplexityOptions one, many;
    one.policy = many.policy = kv::PolicySpec(spec);
    one.chunk = 1;
    many.chunk = 29;
    one.threads = many.threads = 2;
    if (std::string(spec).rfind("recompute", 0) == 0) one.score_from = many.score_from = 250;
    const auto a = evaluate_perplexity(*m, tokens, one);
    const auto b = evaluate_perplexity(*m, tokens, many);
    ASSERT_EQ(a.nll.size(), b.nll.size());
    for (size_t i = 0; i < a.nll.size(); ++i) ASSERT_EQ(a.nll[i], b.nll[i]) << spec << " " << i;
  }
}

TEST(Gemma3, KvBytesFollowThePerLayerWindows) {
  auto m = Model::load(test::write_tiny_model(test::temp_dir(), gemma_spec(DType::Q8_0)));
  const auto tokens = random_tokens(200, 2);
  const uint64_t per_slot_layer = 2 * 2 * 32 * 4;  // K and V, 2 KV heads of 32, f32
  PerplexityOptions o;
  o.chunk = 4;
  o.policy = kv::PolicySpec("sink:2+40");
  // 2 global layers of 2 + 40 + 3 slots, 2 local layers of 12 + 3.
  EXPECT_EQ(evaluate_perplexity(*m, tokens, o).kv_bytes_peak, per_slot_layer * (2 * 45 + 2 * 15));
  o.policy = kv::PolicySpec("sink:2+40,local=policy");
  EXPECT_EQ(evaluate_perplexity(*m, tokens, o).kv_bytes_peak, per_slot_layer * 4 * 45);
}

TEST(Gemma3, MissingTensorsAreNamed) {
  for (const char* t :
       {"blk.1.attn_q_norm.weight", "blk.0.post_ffw_norm.weight", "blk.2.attn_k_norm.weight"}) {
    auto spec = gemma_spec(DType::Q8_0);
    spec.omit_tensor = t;
    try {
      Model::load(test::write_tiny_model(test::temp_dir(), spec));
      ADD_FAILURE() << "loaded without " << t;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(t), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace spillway
