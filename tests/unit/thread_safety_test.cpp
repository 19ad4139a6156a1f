// The thread-safety contract (model/model.h, session/session.h, core/thread_pool.h): one
// loaded Model shared by several threads, each running its own Session, gives every stream
// exactly the logits it gets when the streams run one after another on one thread, bit
// for bit, with a pool per session and with one pool shared by all. Run under
// ThreadSanitizer by scripts/test.sh (build-tsan/).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using model::Model;

struct Stream {
  std::string spec;
  std::vector<TokenId> tokens;
};

// A prompt of 40 tokens fed at once (chunked prefill, every token's logits), then the rest
// decoded one token at a time; all logits in order.
std::vector<float> run_stream(const Model& m, const Stream& st, ThreadPool* pool, int threads) {
  SessionOptions o;
  o.policy = kv::PolicySpec(st.spec);
  o.threads = threads;
  o.max_batch = 16;
  Session s(m, o, pool);
  const auto n_vocab = static_cast<size_t>(m.config().n_vocab);
  std::vector<float> out;
  const std::span<const TokenId> all(st.tokens);
  s.feed(all.first(40), [&](int64_t, const float* l) {
    out.insert(out.end(), l, l + n_vocab);
    return true;
  });
  for (size_t i = 40; i < all.size(); ++i) {
    s.feed(all.subspan(i, 1));
    out.insert(out.end(), s.last_logits(), s.last_logits() + n_vocab);
  }
  return out;
}

std::vector<Stream> streams() {
  const char* specs[] = {
      "sink:4+28", "window:24", "full", "h2o:4+20", "sink:2+30,positions=absolute", "tova:24"};
  std::vector<Stream> v;
  for (size_t i = 0; i < std::size(specs); ++i)
    v.push_back({specs[i], test::random_tokens(100 + 7 * static_cast<int64_t>(i), 50 + i)});
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs every stream on its own thread at once (pool: shared, or nullptr for one each).
std::vector<std::vector<float>> run_parallel(const Model& m, const std::vector<Stream>& v,
                                             ThreadPool* pool) {
  std::vector<std::vector<float>> out(v.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < v.size(); ++i)
    threads.emplace_back([&, i] { out[i] = run_stream(m, v[i], pool, 2); });
  for (auto& t : threads) t.join();
  return out;
}

class ThreadSafety : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Model> load() {
    test::TinyModelSpec s;
    s.architecture = GetParam();
    if (s.architecture == "gemma3") {
      s.n_layer = 3;
      s.sliding_window = 10;
      s.swa_pattern = 3;
    }
    return Model::load(test::write_tiny_model(test::temp_dir(), s, GetParam() + ".gguf"));
  }
};

TEST_P(ThreadSafety, SessionsOnThreadsMatchSequentialRuns) {
  const auto m = load();
  const auto v = streams();
  std::vector<std::vector<float>> ref;
  for (const Stream& st : v) ref.push_back(run_stream(*m, st, nullptr, 1));
  for (int round = 0; round < 2; ++round) {
    const auto got = run_parallel(*m, v, nullptr);
    for (size_t i = 0; i < v.size(); ++i)
      EXPECT_TRUE(same_bits(got[i], ref[i])) << v[i].spec << ", round " << round;
  }
}

TEST_P(ThreadSafety, SessionsSharingOnePoolMatchSequentialRuns) {
  const auto m = load();
  const auto v = streams();
  std::vector<std::vector<float>> ref;
  for (const Stream& st : v) ref.push_back(run_stream(*m, st, nullptr, 1));
  ThreadPool pool(3);
  const auto got = run_parallel(*m, v, &pool);
  for (size_t i = 0; i < v.size(); ++i) EXPECT_TRUE(same_bits(got[i], ref[i])) << v[i].spec;
}

// Models loaded on several threads at once, each then used by another thread.
TEST_P(ThreadSafety, ConcurrentLoads) {
  const auto dir = test::temp_dir();
  test::TinyModelSpec s;
  s.architecture = GetParam();
  const std::string path = test::write_tiny_model(dir, s, "concurrent.gguf");
  std::vector<std::unique_ptr<Model>> models(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < models.size(); ++i)
    threads.emplace_back([&, i] { models[i] = Model::load(path); });
  for (auto& t : threads) t.join();
  const Stream st{"sink:4+28", test::random_tokens(60, 9)};
  const auto ref = run_stream(*models[0], st, nullptr, 1);
  for (size_t i = 1; i < models.size(); ++i)
    EXPECT_TRUE(same_bits(run_stream(*models[i], st, nullptr, 1), ref)) << i;
}

// The shared model's tokenizer encoding and decoding on several threads at once.
TEST_P(ThreadSafety, TokenizerOnThreads) {
  const auto m = load();
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the other hen, " + std::to_string(i * 7919) + " there\n";
  const auto ref = m->tokenizer().encode(text);
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < ok.size(); ++i)
    threads.emplace_back([&, i] {
      for (int r = 0; r < 5; ++r) ok[i] += m->tokenizer().encode(text) == ref;
      ok[i] += m->tokenizer().decode(ref) == text;
    });
  for (auto& t : threads) t.join();
  for (int k : ok) EXPECT_EQ(k, 6);
}

INSTANTIATE_TEST_SUITE_P(Arch, ThreadSafety, ::testing::Values("llama", "gemma3"));

}  // namespace
}  // namespace spillway
