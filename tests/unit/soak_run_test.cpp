// SoakRun on a tiny model: a checkpoint at every multiple of `every` and at the end, with
// the figures a soak judges filled in; a soak stopped at a checkpoint and resumed in a new
// SoakRun scores every interval as the unbroken one does, one stream and three batched;
// bad options and states that do not fit are errors.
#include "spillway/session/soak.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using analysis::SoakCheckpoint;

const model::Model& tiny() {
  static const auto m =
      model::Model::load(test::write_tiny_model(test::temp_dir(), {}, "soak.gguf"));
  return *m;
}

SoakOptions options(int64_t streams) {
  SoakOptions o;
  o.policy = kv::PolicySpec("sink:2+14");
  o.streams = streams;
  o.every = 10;
  return o;
}

// The figures a resumed soak must reproduce (time, memory and CPU figures aside).
void expect_same_scores(const SoakCheckpoint& a, const SoakCheckpoint& b) {
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.nll_interval, b.nll_interval) << "at " << a.tokens;
  EXPECT_EQ(a.nll_running, b.nll_running) << "at " << a.tokens;
  EXPECT_EQ(a.nll_tokens, b.nll_tokens);
  EXPECT_EQ(a.nonfinite, b.nonfinite);
  EXPECT_EQ(a.kv_bytes, b.kv_bytes);
}

TEST(SoakRun, CheckpointsAtEveryMultipleAndAtTheEnd) {
  ThreadPool pool(2);
  SoakRun run(tiny(), test::random_tokens(37, 1), options(1), &pool);
  std::vector<int64_t> at;
  while (run.progress().tokens < 45) at.push_back(run.run_interval(45).tokens);
  EXPECT_EQ(at, (std::vector<int64_t>{10, 20, 30, 40, 45}));
  const auto& cs = run.progress().checkpoints;
  ASSERT_EQ(cs.size(), 5u);
  for (const SoakCheckpoint& c : cs) {
    EXPECT_GT(c.tokens_per_s, 0.0);
    EXPECT_GE(c.latency_ms_p99, c.latency_ms_median);
    EXPECT_GE(c.latency_ms_max, c.latency_ms_p99);
    EXPECT_GE(c.cpu_ms_median, 0.0);  // Linux has a process CPU clock
    EXPECT_GT(c.rss_bytes, c.rss_anon_bytes);
    EXPECT_GT(c.rss_anon_bytes, 0u);
    EXPECT_EQ(c.kv_bytes, cs[0].kv_bytes);
    EXPECT_GT(c.kv_bytes, 0u);
    EXPECT_EQ(c.nonfinite, 0);
    EXPECT_TRUE(std::isfinite(c.nll_interval) && c.nll_interval > 0.0);
    EXPECT_EQ(c.segment, 0);
  }
  EXPECT_EQ(cs.back().nll_tokens, 45);
  EXPECT_EQ(cs[1].seconds >= cs[0].seconds, true);
  EXPECT_EQ(run.kv_bytes(), cs.back().kv_bytes);
  EXPECT_GE(run.kv_bytes_peak(), run.kv_bytes());
}

void check_resumed_equals_whole(int64_t streams) {
  ThreadPool pool(2);
  const auto corpus = test::random_tokens(53, 7);
  SoakRun whole(tiny(), corpus, options(streams), &pool);
  while (whole.progress().tokens < 60) whole.run_interval(60);

  SoakProgress saved;
  std::vector<std::string> states;
  {
    SoakRun first(tiny(), corpus, options(streams), &pool);
    first.run_interval(60);
    first.run_interval(60);
    saved = first.progress();
    states = first.save_states();
  }
  SoakRun rest(tiny(), corpus, options(streams), &pool);
  const std::vector<std::string_view> views(states.begin(), states.end());
  rest.resume(saved, views, "saved");
  EXPECT_EQ(rest.segment(), 1);
  while (rest.progress().tokens < 60) rest.run_interval(60);

  const auto& a = whole.progress().checkpoints;
  const auto& b = rest.progress().checkpoints;
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    expect_same_scores(a[i], b[i]);
    EXPECT_EQ(b[i].segment, i < 2 ? 0 : 1);
  }
  EXPECT_EQ(whole.progress().nll_sum, rest.progress().nll_sum);
  EXPECT_EQ(b.back().nll_tokens, 60 * streams);
}

TEST(SoakRun, AResumedStreamScoresWhatAnUnbrokenOneDoes) {
  check_resumed_equals_whole(1);
}

TEST(SoakRun, ResumedBatchedStreamsScoreWhatUnbrokenOnesDo) {
  check_resumed_equals_whole(3);
}

TEST(SoakRun, BadOptionsAndStatesThatDoNotFitAreErrors) {
  ThreadPool pool(1);
  const auto corpus = test::random_tokens(30, 3);
  SoakOptions grows = options(1);
  grows.policy = kv::PolicySpec("full");
  EXPECT_THROW(SoakRun(tiny(), corpus, grows, &pool), InvalidArgument);
  EXPECT_THROW(SoakRun(tiny(), corpus, options(0), &pool), InvalidArgument);
  EXPECT_THROW(SoakRun(tiny(), corpus, options(257), &pool), InvalidArgument);
  SoakOptions no_interval = options(1);
  no_interval.every = 0;
  EXPECT_THROW(SoakRun(tiny(), corpus, no_interval, &pool), InvalidArgument);
  EXPECT_THROW(SoakRun(tiny(), test::random_tokens(1, 3), options(1), &pool), InvalidArgument);

  SoakRun one(tiny(), corpus, options(1), &pool);
  EXPECT_THROW(one.run_interval(0), InvalidArgument);
  one.run_interval(30);
  SoakProgress p = one.progress();
  const std::vector<std::string> states = one.save_states();
  const std::vector<std::string_view> views(states.begin(), states.end());

  SoakRun two(tiny(), corpus, options(2), &pool);  // two streams, one state
  EXPECT_THROW(two.resume(p, views, "saved"), FormatError);
  SoakRun elsewhere(tiny(), corpus, options(1), &pool);  // the progress at another token
  p.tokens += 1;
  EXPECT_THROW(elsewhere.resume(p, views, "saved"), FormatError);
  EXPECT_THROW(one.resume(one.progress(), views, "saved"), InvalidArgument);  // already ran
}

}  // namespace
}  // namespace spillway
