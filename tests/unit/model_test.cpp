// The decoder on a tiny random model: policies against a naive reference that keeps
// keys un-rotated and rotates every key by its rank at every step; chunked against
// per-token; prefill against decode; bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "model/llama/llama.h"
#include "spillway/core/error.h"
#include "spillway/core/quant.h"
#include "spillway/model/model.h"
#include "spillway/ops/ops.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using model::Model;
using test::NaiveReference;

using test::random_tokens;

class TinyModelTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = Model::load(test::write_tiny_model(test::temp_dir())); }
  std::unique_ptr<Model> model_;
};

// The reference comparison runs on f32 weights: with 8-bit activations, an ulp of
// difference in the attention output can flip one activation's rounding and move the
// logits by far more than the semantics under test. f32 products keep differences at
// rounding level.
class TinyF32ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::TinyModelSpec spec;
    spec.matrix_type = DType::F32;
    spec.embd_type = DType::F32;
    model_ = Model::load(test::write_tiny_model(test::temp_dir(), spec));
  }
  std::unique_ptr<Model> model_;
};

// All logits of a stream under a policy, fed `chunk` tokens at a time.
std::vector<std::vector<float>> session_logits(const Model& m, const std::string& spec,
                                               const std::vector<TokenId>& tokens, int64_t chunk) {
  SessionOptions so;
  so.policy = kv::PolicySpec(spec);
  so.max_batch = chunk;
  so.threads = 1;
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

struct RefCase {
  std::string spec;
  int64_t sinks, window;  // window < 0: full
  bool absolute;
  int64_t tokens;
};

TEST_F(TinyF32ModelTest, PoliciesMatchTheNaiveRotateEveryStepReference) {
  for (const RefCase& rc :
       {RefCase{"full", 0, -1, false, 300}, RefCase{"window:48", 0, 48, false, 3000},
        RefCase{"sink:4+44", 4, 44, false, 3000}, RefCase{"sink:1+20", 1, 20, false, 500},
        RefCase{"sink:4+44,positions=absolute", 4, 44, true, 3000},
        RefCase{"sink:4+44,kv=f16", 4, 44, false, 500}}) {
    const auto tokens = random_tokens(rc.tokens, 7);
    NaiveReference ref(*model_, rc.sinks, rc.window, rc.absolute);
    const auto got = session_logits(*model_, rc.spec, tokens, 1);
    const auto got_chunked = session_logits(*model_, rc.spec, tokens, 37);
    double worst = 0, worst_chunked = 0;
    for (size_t n = 0; n < tokens.size(); ++n) {
      const auto want = ref.step(tokens[n]);
      worst = std::max(worst, max_abs_diff(got[n], want));
      worst_chunked = std::max(worst_chunked, max_abs_diff(got_chunked[n], want));
    }
    const double tol = rc.spec.find("f16") != std::string::npos ? 2e-2 : 1e-3;
    EXPECT_LE(worst, tol) << rc.spec;
    RecordProperty(rc.spec, std::to_string(worst));
    EXPECT_LE(worst_chunked, tol) << rc.spec << " chunked";
  }
}

TEST_F(TinyF32ModelTest, RecomputeMatchesFreshFullPassesOverTheWindow) {
  const int64_t W = 24;
  const auto tokens = random_tokens(300, 11);
  const auto got = session_logits(*model_, "recompute:24", tokens, 8);
  double worst = 0;
  for (size_t n = 0; n < tokens.size(); n += 7) {
    NaiveReference ref(*model_, 0, -1, false);
    std::vector<float> want;
    for (size_t m = n + 1 > static_cast<size_t>(W) ? n + 1 - W : 0; m <= n; ++m)
      want = ref.step(tokens[m]);
    worst = std::max(worst, max_abs_diff(got[n], want));
  }
  EXPECT_LE(worst, 1e-3);
}

TEST_F(TinyModelTest, AbsolutePositionsChangeOnlySinkPolicies) {
  const auto tokens = random_tokens(200, 3);
  // window: only distances enter RoPE scores, so absolute == cache exactly.
  const auto a = session_logits(*model_, "window:30", tokens, 16);
  const auto b = session_logits(*model_, "window:30,positions=absolute", tokens, 16);
  for (size_t n = 0; n < tokens.size(); ++n) EXPECT_EQ(a[n], b[n]) << n;
  const auto c = session_logits(*model_, "sink:4+26", tokens, 16);
  const auto d = session_logits(*model_, "sink:4+26,positions=absolute", tokens, 16);
  EXPECT_EQ(c[20], d[20]);  // before any eviction
  EXPECT_GT(max_abs_diff(c[150], d[150]), 1e-4);
}

TEST_F(TinyModelTest, SinkWithRoomForTheWholeStreamEqualsFull) {
  const auto tokens = random_tokens(120, 5);
  const auto full = session_logits(*model_, "full", tokens, 16);
  for (const char* spec : {"sink:4+116", "sink:0+120", "window:120", "sink:60+200"}) {
    const auto s = session_logits(*model_, spec, tokens, 16);
    for (size_t n = 0; n < tokens.size(); ++n) ASSERT_EQ(s[n], full[n]) << spec << " " << n;
  }
}

TEST_F(TinyModelTest, ChunkedPerplexityEqualsPerToken) {
  const auto tokens = random_tokens(700, 9);
  for (const char* spec : {"full", "window:64", "sink:4+60", "recompute:32"}) {
    PerplexityOptions one, many;
    one.policy = many.policy = kv::PolicySpec(spec);
    one.chunk = 1;
    many.chunk = 50;
    one.threads = many.threads = 2;
    if (std::string(spec).rfind("recompute", 0) == 0) one.score_from = many.score_from = 600;
    const auto a = evaluate_perplexity(*model_, tokens, one);
    const auto b = evaluate_perplexity(*model_, tokens, many);
    ASSERT_EQ(a.nll.size(), b.nll.size());
    // Bit-identical: a token's keys are attended in the same order in pieces of the same
    // size whichever way the work is split, and matrix products give each token the same
    // bits in a batch as alone.
    for (size_t i = 0; i < a.nll.size(); ++i) ASSERT_EQ(a.nll[i], b.nll[i]) << spec << " " << i;
    EXPECT_EQ(a.ppl, b.ppl);
  }
}

TEST_F(TinyModelTest, KvMemoryStaysWithinThePolicysCapacity) {
  const auto tokens = random_tokens(400, 2);
  const auto& c = model_->config();
  const uint64_t per_slot = 2 * c.n_layer * c.n_head_kv * c.head_dim * 4;
  for (int64_t chunk : {1, 16}) {
    PerplexityOptions o;
    o.policy = kv::PolicySpec("sink:4+60");
    o.chunk = chunk;
    const auto r = evaluate_perplexity(*model_, tokens, o);
    EXPECT_EQ(r.kv_bytes_peak, per_slot * (64 + chunk - 1));
  }
  PerplexityOptions o;
  o.policy = kv::PolicySpec("sink:4+60,kv=f16");
  o.chunk = 1;
  EXPECT_EQ(evaluate_perplexity(*model_, tokens, o).kv_bytes_peak, per_slot / 2 * 64);
}

// A q8_0 KV cache needs rows of whole 32-element blocks: a tiny model with head size 32,
// f32 weights (as TinyF32ModelTest, so that logits differ by what the cache rounds, not by
// flipped roundings of 8-bit activations).
class TinyQ8KvModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::TinyModelSpec spec;
    spec.n_embd = 128;  // 4 heads of 32, 2 KV heads
    spec.matrix_type = DType::F32;
    spec.embd_type = DType::F32;
    model_ = Model::load(test::write_tiny_model(test::temp_dir(), spec));
  }
  std::unique_ptr<Model> model_;
};

TEST_F(TinyQ8KvModelTest, ChunkedEqualsPerTokenBitForBit) {
  const auto tokens = random_tokens(500, 13);
  for (const char* spec : {"full,kv=q8_0", "sink:4+60,kv=q8_0", "window:64,kv=q8_0"}) {
    PerplexityOptions one, many;
    one.policy = many.policy = kv::PolicySpec(spec);
    one.chunk = 1;
    many.chunk = 50;
    one.threads = many.threads = 2;
    const auto a = evaluate_perplexity(*model_, tokens, one);
    const auto b = evaluate_perplexity(*model_, tokens, many);
    ASSERT_EQ(a.nll.size(), b.nll.size());
    for (size_t i = 0; i < a.nll.size(); ++i) ASSERT_EQ(a.nll[i], b.nll[i]) << spec << " " << i;
    // Logits too, prefill in chunks of 37 against decode one token at a time.
    EXPECT_EQ(session_logits(*model_, spec, tokens, 1), session_logits(*model_, spec, tokens, 37))
        << spec;
  }
}

TEST_F(TinyQ8KvModelTest, StaysCloseToF32KvAndHoldsAQuarterOfItsBytesPlusScales) {
  const auto tokens = random_tokens(400, 4);
  const auto f32 = session_logits(*model_, "sink:4+60", tokens, 16);
  const auto q8 = session_logits(*model_, "sink:4+60,kv=q8_0", tokens, 16);
  double worst = 0, moved = 0;
  for (size_t n = 0; n < tokens.size(); ++n) {
    worst = std::max(worst, max_abs_diff(f32[n], q8[n]));
    moved += max_abs_diff(f32[n], q8[n]) > 0 ? 1 : 0;
  }
  // Measured: 0.089 (kv=f16: 0.003); a wrong scale or block offset moves logits by O(1).
  EXPECT_LE(worst, 0.15);
  EXPECT_GT(moved, 0) << "q8_0 keys and values should round somewhere";
  const auto& c = model_->config();
  PerplexityOptions o;
  o.policy = kv::PolicySpec("sink:4+60,kv=q8_0");
  o.chunk = 1;
  // Per slot, layer and KV head: a key and a value row of head_dim / 32 blocks of 34 bytes.
  EXPECT_EQ(evaluate_perplexity(*model_, tokens, o).kv_bytes_peak,
            static_cast<uint64_t>(2 * c.n_layer * c.n_head_kv * (c.head_dim / 32) * 34 * 64));
}

TEST_F(TinyModelTest, Q8KvNeedsAHeadSizeOfWholeBlocks) {
  SessionOptions so;
  so.policy =
      kv::PolicySpec("sink:4+60,kv=q8_0");  // the spec is fine; this model's head size (16) is not
  try {
    Session s(*model_, so);
    FAIL() << "a q8_0 cache for head size 16 was made";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 32, found 16"), std::string::npos)
        << e.what();
  }
}

TEST_F(TinyModelTest, BadInputIsRejectedWithClearErrors) {
  SessionOptions so;
  EXPECT_THROW(so.policy = kv::PolicySpec("sink:4"), InvalidArgument);  // parsed where it is given
  so.policy = kv::PolicySpec("full");
  Session s(*model_, so);
  const TokenId bad[1] = {static_cast<TokenId>(test::kTinyVocab)};
  EXPECT_THROW(s.feed(bad), InvalidArgument);
  PerplexityOptions o;
  const std::vector<TokenId> one = {5};
  EXPECT_THROW(evaluate_perplexity(*model_, one, o), InvalidArgument);
}

}  // namespace
}  // namespace spillway

namespace spillway {
namespace {

std::string load_error(const test::TinyModelSpec& spec) {
  try {
    model::Model::load(test::write_tiny_model(test::temp_dir(), spec));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelLoad, UnsupportedOrBrokenFilesNameWhatIsWrong) {
  test::TinyModelSpec spec;
  spec.architecture = "gpt2";
  EXPECT_NE(
      load_error(spec).find("architecture 'gpt2' is not supported (supported: llama, gemma3)"),
      std::string::npos)
      << load_error(spec);
  spec = {};
  spec.rope_scaling_type = "yarn";
  EXPECT_NE(load_error(spec).find("RoPE scaling type 'yarn'"), std::string::npos)
      << load_error(spec);
  spec = {};
  spec.omit_tensor = "blk.1.ffn_up.weight";
  EXPECT_NE(load_error(spec).find("blk.1.ffn_up.weight"), std::string::npos) << load_error(spec);
  spec = {};
  spec.misshape_tensor = "blk.0.attn_k.weight";
  const std::string msg = load_error(spec);
  EXPECT_NE(msg.find("tensor 'blk.0.attn_k.weight' has shape [32, 64], expected [64, 32]"),
            std::string::npos)
      << msg;
}

TEST(ModelLoad, LinearRopeScalingIsApplied) {
  test::TinyModelSpec spec;
  spec.rope_scaling_type = "linear";
  auto m = model::Model::load(test::write_tiny_model(test::temp_dir(), spec));
  const auto& llama = dynamic_cast<const model::llama::LlamaModel&>(*m);
  EXPECT_DOUBLE_EQ(llama.llama_config().rope_freq_scale, 0.5);
  EXPECT_DOUBLE_EQ(llama.rope().inv_freq[0], 0.5);
}

}  // namespace
// The architectures' tensor tables: every tensor of the file is bound and found by its
// name, and a decoded token reads every tensor once but the embedding, of which it reads
// one row (the output matrix when the embedding is tied to it), counted from the file's
// own tensor list, not from the tables.
TEST(ModelLoad, TensorTablesBindEveryTensorOnce) {
  for (const char* arch : {"llama", "gemma3"}) {
    for (bool tied : {true, false}) {
      SCOPED_TRACE(::testing::Message() << arch << (tied ? " tied" : " untied"));
      test::TinyModelSpec spec;
      spec.architecture = arch;
      spec.tied_output = tied;
      if (std::string(arch) == "gemma3") {
        spec.n_layer = 3;
        spec.sliding_window = 10;
        spec.swa_pattern = 3;
      }
      auto m = model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "tables.gguf"));
      const gguf::GgufFile& f = m->file();
      uint64_t want = 0;
      for (const gguf::TensorInfo& t : f.tensors()) {
        const bool is_matrix = t.n_dims == 2;
        EXPECT_TRUE(is_matrix ? m->find_matrix(t.name) != nullptr
                              : m->find_vector(t.name) != nullptr)
            << t.name << " is not bound";
        if (t.name == "token_embd.weight") {
          want += t.row_bytes() + (tied ? t.n_bytes : 0);
        } else {
          want += t.n_bytes;
        }
        if (!is_matrix) {
          EXPECT_EQ(m->find_vector(t.name), static_cast<const void*>(t.data));
        }
      }
      EXPECT_EQ(m->weight_bytes_per_token(), want);
      const ops::WeightMatrix* q = m->find_matrix("blk.1.attn_q.weight");
      ASSERT_NE(q, nullptr);
      EXPECT_EQ(q->rows, m->config().n_head * m->config().head_dim);
      EXPECT_EQ(q->cols, m->config().n_embd);
      EXPECT_EQ(m->find_matrix("output.weight") == m->find_matrix("token_embd.weight"), false);
      for (const char* none : {"blk.99.attn_q.weight", "blk.1.attn_norm.weight", "blk..x", "blk.1",
                               "blk.-1.attn_q.weight", "attn_q.weight", ""}) {
        EXPECT_EQ(m->find_matrix(none), nullptr) << none;
      }
      EXPECT_EQ(m->find_vector("blk.1.attn_q.weight"), nullptr);
      EXPECT_NE(m->find_vector("output_norm.weight"), nullptr);
    }
  }
}

}  // namespace spillway
