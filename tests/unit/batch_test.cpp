// Continuous batching on the tiny models: sessions with different policies, stepped
// together through one forward pass, end every step with the logits each gets alone, bit
// for bit; bad steps are rejected before any session changes.
#include "spillway/session/batch.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using model::Model;

using test::random_tokens;

std::unique_ptr<Model> tiny(DType t, bool gemma) {
  test::TinyModelSpec s;
  s.matrix_type = t;
  s.embd_type = DType::Q8_0;
  if (gemma) {
    s.architecture = "gemma3";
    s.n_layer = 3;
    s.sliding_window = 10;
    s.swa_pattern = 3;
  }
  return Model::load(
      test::write_tiny_model(test::temp_dir(), s, gemma ? "batch_gemma.gguf" : "batch.gguf"));
}

SessionOptions opts(const std::string& spec) {
  SessionOptions o;
  o.policy = kv::PolicySpec(spec);
  o.threads = 2;
  o.max_batch = 8;
  return o;
}

// Each stream: a prompt fed in chunks of up to `prompt_chunk`, then one token per step;
// streams start at different steps, so prefills and decodes share passes.
void check_batched_equals_alone(const Model& m, const std::vector<std::string>& specs) {
  const size_t n = specs.size();
  std::vector<std::vector<TokenId>> streams;
  for (size_t i = 0; i < n; ++i) streams.push_back(random_tokens(70 + 9 * i, 100 + i));
  // Reference: each stream alone, the same chunks, logits after every chunk.
  std::vector<std::vector<std::vector<float>>> alone(n);
  auto chunks = [&](size_t i) {
    std::vector<std::pair<size_t, size_t>> c;  // [begin, end)
    const size_t prompt = 5 + 3 * i;
    for (size_t b = 0; b < prompt;) {
      const size_t e = std::min(prompt, b + 4);
      c.emplace_back(b, e);
      b = e;
    }
    for (size_t b = prompt; b < streams[i].size(); ++b) c.emplace_back(b, b + 1);
    return c;
  };
  for (size_t i = 0; i < n; ++i) {
    Session s(m, opts(specs[i]));
    for (auto [b, e] : chunks(i)) {
      s.feed(std::span(streams[i]).subspan(b, e - b));
      alone[i].emplace_back(s.last_logits(), s.last_logits() + m.config().n_vocab);
    }
  }
  // Batched: stream i joins at step 2 i; a stream whose step needs more tokens than its
  // cache takes at once (policies that read attention take one) is fed one at a time.
  std::vector<std::unique_ptr<Session>> sessions;
  for (size_t i = 0; i < n; ++i) sessions.push_back(std::make_unique<Session>(m, opts(specs[i])));
  BatchDecoder dec(m, 64, nullptr, 2);
  std::vector<std::vector<std::pair<size_t, size_t>>> plan(n);
  for (size_t i = 0; i < n; ++i) plan[i] = chunks(i);
  std::vector<size_t> next(n, 0);
  int64_t shared_steps = 0;
  for (size_t step = 0;; ++step) {
    std::vector<BatchDecoder::Entry> entries;
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i) {
      if (step < 2 * i || next[i] >= plan[i].size()) continue;
      auto [b, e] = plan[i][next[i]];
      if (static_cast<int64_t>(e - b) > sessions[i]->cache().max_step()) continue;
      entries.push_back({sessions[i].get(), std::span(streams[i]).subspan(b, e - b)});
      who.push_back(i);
    }
    // Streams whose chunk is too big for one step go alone through feed().
    for (size_t i = 0; i < n; ++i) {
      if (step < 2 * i || next[i] >= plan[i].size()) continue;
      auto [b, e] = plan[i][next[i]];
      if (static_cast<int64_t>(e - b) <= sessions[i]->cache().max_step()) continue;
      sessions[i]->feed(std::span(streams[i]).subspan(b, e - b));
      const float* l = sessions[i]->last_logits();
      ASSERT_EQ(std::vector<float>(l, l + m.config().n_vocab), alone[i][next[i]]) << specs[i];
      ++next[i];
    }
    if (entries.empty()) {
      bool done = true;
      for (size_t i = 0; i < n; ++i) done &= next[i] >= plan[i].size();
      if (done) break;
      continue;
    }
    dec.step(entries);
    if (entries.size() > 1) ++shared_steps;
    for (size_t i : who) {
      const float* l = sessions[i]->last_logits();
      ASSERT_EQ(std::vector<float>(l, l + m.config().n_vocab), alone[i][next[i]])
          << specs[i] << " chunk " << next[i];
      ++next[i];
    }
  }
  EXPECT_GT(shared_steps, 40);
  for (size_t i = 0; i < n; ++i)
    EXPECT_EQ(sessions[i]->n_past(), static_cast<int64_t>(streams[i].size()));
}

TEST(BatchDecoder, EachStreamGetsTheLogitsItGetsAlone) {
  auto m = tiny(DType::Q4_1, false);
  check_batched_equals_alone(
      *m, {"full", "sink:4+20", "window:16,kv=f16", "h2o:4+12", "sink:2+30,positions=absolute"});
}

TEST(BatchDecoder, GemmaLocalLayersAndAttentionPolicies) {
  auto m = tiny(DType::Q8_0, true);
  check_batched_equals_alone(*m, {"sink:4+20", "tova:18", "full", "nullsink:16"});
}

// Streams whose policies read no attention attend in one job per layer (enough (token, KV
// head) items for the threads); each still gets its own bits, on local and global layers.
TEST(BatchDecoder, StreamsAttendingInOneJob) {
  auto m = tiny(DType::Q8_0, true);
  check_batched_equals_alone(
      *m, {"sink:4+20", "full", "window:16,kv=f16", "sink:2+12", "nullsink:16", "sink:1+8"});
  // Streams whose virtual sink is one constant logit each, different per stream.
  check_batched_equals_alone(*m, {"nullsink:12,calib=const:2", "nullsink:16,calib=const:-1",
                                  "sink:2+12", "nullsink:10,calib=const:0.5", "full"});
}

TEST(BatchDecoder, RejectsBadStepsBeforeChangingAnySession) {
  auto m = tiny(DType::Q4_1, false);
  auto other = tiny(DType::Q8_0, true);
  Session a(*m, opts("sink:4+20")), b(*m, opts("h2o:4+12")), c(*m, opts("recompute:16"));
  Session g(*other, opts("full"));
  BatchDecoder dec(*m, 6, nullptr, 2);
  const auto t = random_tokens(10, 7);
  const std::span<const TokenId> one(t.data(), 1), three(t.data(), 3), seven(t.data(), 7);
  using E = BatchDecoder::Entry;
  EXPECT_THROW(dec.step({}), InvalidArgument);
  EXPECT_THROW(dec.step(std::vector<E>{{&a, one}, {&a, one}}), InvalidArgument);
  EXPECT_THROW(dec.step(std::vector<E>{{&a, one}, {&g, one}}), InvalidArgument);
  EXPECT_THROW(dec.step(std::vector<E>{{&a, one}, {&c, one}}), InvalidArgument);
  EXPECT_THROW(dec.step(std::vector<E>{{&a, {}}}), InvalidArgument);
  EXPECT_THROW(dec.step(std::vector<E>{{&b, three}}), InvalidArgument);  // takes one a step
  EXPECT_THROW(dec.step(std::vector<E>{{&a, seven}}), InvalidArgument);  // over max_tokens
  EXPECT_THROW(dec.step(std::vector<E>{{nullptr, one}}), InvalidArgument);
  EXPECT_EQ(a.n_past(), 0);
  EXPECT_EQ(b.n_past(), 0);
  EXPECT_EQ(a.last_logits(), nullptr);
  EXPECT_THROW(BatchDecoder(*m, 0), InvalidArgument);
  dec.step(std::vector<E>{{&a, three}, {&b, one}});
  EXPECT_EQ(a.n_past(), 3);
  EXPECT_EQ(b.n_past(), 1);
}

}  // namespace
}  // namespace spillway
