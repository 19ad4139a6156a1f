// sink:S+W,evict=turn on the tiny models: chunked == per-token with the same turn marks,
// the naive rotate-every-step reference over the spans the policy chose, and sink:S+W
// bit for bit when no turn is marked.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using model::Model;

using test::random_tokens;

std::unique_ptr<Model> tiny(DType t, bool gemma) {
  test::TinyModelSpec s;
  s.matrix_type = t;
  s.embd_type = t == DType::F32 ? DType::F32 : DType::Q8_0;
  if (gemma) {
    s.architecture = "gemma3";
    s.n_layer = 3;
    s.sliding_window = 10;
    s.swa_pattern = 3;
  }
  return Model::load(test::write_tiny_model(test::temp_dir(), s));
}

// Turn starts of a scripted conversation: a system turn of 5 tokens, then turns of 3 to 14
// tokens, and one of 40 (longer than the window: evicted token by token inside it).
std::vector<int64_t> turn_marks(int64_t n_tokens) {
  std::vector<int64_t> marks;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> len(3, 14);
  for (int64_t m = 5; m < n_tokens; m += marks.size() == 6 ? 40 : len(rng)) marks.push_back(m);
  return marks;
}

// Every token's logits of a session fed in pieces of `chunk` tokens, with the turn marks
// given before the tokens they mark.
std::vector<std::vector<float>> run(const Model& m, const std::vector<TokenId>& tokens,
                                    const std::vector<int64_t>& marks, const char* spec,
                                    int64_t chunk) {
  SessionOptions so;
  so.policy = kv::PolicySpec(spec);
  so.max_batch = chunk;
  so.threads = 2;
  Session s(m, so);
  std::vector<std::vector<float>> out;
  size_t next_mark = 0;
  const int64_t n_vocab = m.config().n_vocab;
  for (size_t done = 0; done < tokens.size();) {
    const size_t end = std::min(tokens.size(), done + static_cast<size_t>(chunk));
    while (next_mark < marks.size() && marks[next_mark] < static_cast<int64_t>(end))
      s.mark_turn_start(marks[next_mark++]);
    s.feed(std::span<const TokenId>(tokens.data() + done, end - done),
           [&](int64_t, const float* l) {
             out.emplace_back(l, l + n_vocab);
             return true;
           });
    done = end;
  }
  return out;
}

TEST(TurnPolicyForward, ChunkedEqualsPerToken) {
  for (bool gemma : {false, true}) {
    auto m = tiny(DType::Q8_0, gemma);
    const auto tokens = random_tokens(170, 5);
    const auto marks = turn_marks(170);
    for (const char* spec : {"sink:2+22,evict=turn", "sink:4+20,evict=turn,positions=absolute",
                             "sink:2+22,evict=turn,local=policy"}) {
      EXPECT_EQ(run(*m, tokens, marks, spec, 1), run(*m, tokens, marks, spec, 37)) << spec << gemma;
    }
  }
}

TEST(TurnPolicyForward, WithoutMarksItIsSinkSWBitForBit) {
  for (bool gemma : {false, true}) {
    auto m = tiny(DType::Q8_0, gemma);
    const auto tokens = random_tokens(120, 9);
    EXPECT_EQ(run(*m, tokens, {}, "sink:3+21,evict=turn", 16),
              run(*m, tokens, {}, "sink:3+21", 16));
  }
}

double max_abs_diff(const float* a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < b.size(); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
  return d;
}

TEST(TurnPolicyForward, MatchesTheNaiveReference) {
  for (bool gemma : {false, true}) {
    auto m = tiny(DType::F32, gemma);
    const auto tokens = random_tokens(160, 13);
    const auto marks = turn_marks(160);
    for (bool absolute : {false, true}) {
      SessionOptions so;
      so.policy = kv::PolicySpec(absolute ? "sink:2+22,evict=turn,positions=absolute"
                                          : "sink:2+22,evict=turn");
      so.max_batch = 1;
      so.threads = 1;
      Session s(*m, so);
      for (int64_t mark : marks) s.mark_turn_start(mark);
      // The reference attends to what the policy held after planning each token.
      std::vector<int64_t> held;
      test::NaiveReference ref(*m, 0, -1, absolute);
      ref.set_span_fn([&](int64_t, int64_t) { return held; });
      double worst = 0;
      bool jumped = false;  // some step evicted more than one token
      size_t last_size = 0;
      for (TokenId t : tokens) {
        s.feed(std::span<const TokenId>(&t, 1));
        held.clear();
        for (int64_t x : s.cache().policy().slot_contents())
          if (x >= 0) held.push_back(x);
        std::sort(held.begin(), held.end());
        jumped |= held.size() + 1 < last_size;
        last_size = held.size();
        worst = std::max(worst, max_abs_diff(s.last_logits(), ref.step(t)));
      }
      EXPECT_LE(worst, 1e-3) << gemma << absolute;
      EXPECT_TRUE(jumped);
      EXPECT_EQ(s.policy().n_sinks(), 5);  // the system turn
    }
  }
}

}  // namespace
}  // namespace spillway
