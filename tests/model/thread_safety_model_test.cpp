// The thread-safety contract on the real default model: one loaded Model, four threads
// each running its own Session (prefill, then decode) on its own part of the corpus under
// its own policy, give exactly the logits of the same streams run one after another.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"

namespace spillway {
namespace {

std::string read_prefix(const std::string& path, size_t bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  std::string s(bytes, '\0');
  s.resize(f ? std::fread(s.data(), 1, bytes, f) : 0);
  if (f) std::fclose(f);
  return s;
}

// 48 prompt tokens in one feed (every token's logits), then 12 decoded one at a time.
std::vector<float> run_stream(const model::Model& m, const std::string& spec,
                              std::span<const TokenId> tokens, ThreadPool* pool) {
  SessionOptions o;
  o.policy = kv::PolicySpec(spec);
  o.threads = 2;  // with pool == nullptr: a pool of two threads per session
  o.max_batch = 48;
  Session s(m, o, pool);
  const auto n_vocab = static_cast<size_t>(m.config().n_vocab);
  std::vector<float> out;
  s.feed(tokens.first(48), [&](int64_t, const float* l) {
    out.insert(out.end(), l, l + n_vocab);
    return true;
  });
  for (size_t i = 48; i < tokens.size(); ++i) {
    s.feed(tokens.subspan(i, 1));
    out.insert(out.end(), s.last_logits(), s.last_logits() + n_vocab);
  }
  return out;
}

TEST(ThreadSafetyModel, FourSessionsOnOneModelMatchSequentialRuns) {
  const auto path = test::default_model_path();
  SPILLWAY_REQUIRE_FILE(path);
  SPILLWAY_REQUIRE_FILE(test::corpus_path());
  const auto m = model::Model::load(path);
  const std::vector<TokenId> corpus = m->tokenizer().encode(read_prefix(test::corpus_path(), 4000));
  ASSERT_GE(corpus.size(), 4u * 60);
  const std::vector<std::string> specs = {"sink:4+28", "window:32", "full", "sink:4+28,kv=f16"};
  auto tokens = [&](size_t i) { return std::span<const TokenId>(corpus).subspan(i * 60, 60); };

  std::vector<std::vector<float>> ref;
  for (size_t i = 0; i < specs.size(); ++i)
    ref.push_back(run_stream(*m, specs[i], tokens(i), nullptr));

  for (const bool shared_pool : {false, true}) {
    ThreadPool pool(2);
    std::vector<std::vector<float>> got(specs.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < specs.size(); ++i)
      threads.emplace_back(
          [&, i] { got[i] = run_stream(*m, specs[i], tokens(i), shared_pool ? &pool : nullptr); });
    for (auto& t : threads) t.join();
    for (size_t i = 0; i < specs.size(); ++i) {
      ASSERT_EQ(got[i].size(), ref[i].size());
      EXPECT_EQ(std::memcmp(got[i].data(), ref[i].data(), ref[i].size() * sizeof(float)), 0)
          << specs[i] << (shared_pool ? ", shared pool" : ", own pools");
    }
  }
}

}  // namespace
}  // namespace spillway
