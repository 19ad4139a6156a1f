// The soak's judgement (analysis/soak.h) on checkpoints made up to show each goal pass and
// fail: a flat stream passes, a 10 % slowdown fails, noise wider than the bound is not
// judged, RSS growth within a segment fails but a resumed segment's new baseline does not,
// a changed KV size or a non-finite logit fails, too few intervals are not judged; CPU
// time and anonymous RSS decide where every judged checkpoint has them.
#include "spillway/analysis/soak.h"

#include <gtest/gtest.h>

#include <vector>

namespace spillway::analysis {
namespace {

// n checkpoints every 10,000 tokens, latency from `ms(i)`, RSS 100 MB, KV 1 MB.
template <class F>
std::vector<SoakCheckpoint> stream(int n, F ms) {
  std::vector<SoakCheckpoint> v;
  for (int i = 0; i < n; ++i) {
    SoakCheckpoint c;
    c.tokens = 10'000 * (i + 1);
    c.latency_ms_median = ms(i);
    c.rss_bytes = 100'000'000;
    c.kv_bytes = 1'000'000;
    v.push_back(c);
  }
  return v;
}

TEST(SoakJudgement, AFlatStreamPasses) {
  const auto v = stream(12, [](int i) { return 7.0 + 0.01 * (i % 3); });
  const SoakJudgement j = judge_soak(v, {});
  EXPECT_TRUE(j.judged);
  EXPECT_EQ(j.judged_intervals, 11u);  // the first interval is the warm-up
  EXPECT_EQ(j.baseline, &v[1]);
  EXPECT_EQ(j.latency, SoakVerdict::kPass);
  EXPECT_TRUE(j.rss_ok && j.kv_ok && j.finite_ok);
  EXPECT_EQ(j.verdict, SoakVerdict::kPass);
  EXPECT_EQ(to_string(j.verdict), "pass");
}

TEST(SoakJudgement, ASteadySlowdownFailsAndASpeedUpDoesNot) {
  const auto slower = stream(12, [](int i) { return 7.0 * (1.0 + 0.01 * i); });
  const SoakJudgement j = judge_soak(slower, {});
  EXPECT_NEAR(j.drift, 0.10 / 1.01, 0.01);
  EXPECT_GT(j.drift_low, 0.05);
  EXPECT_EQ(j.latency, SoakVerdict::kFail);
  EXPECT_EQ(j.verdict, SoakVerdict::kFail);
  const auto faster = stream(12, [](int i) { return 7.0 * (1.0 - 0.01 * i); });
  EXPECT_EQ(judge_soak(faster, {}).verdict, SoakVerdict::kPass);
}

TEST(SoakJudgement, NoiseWiderThanTheBoundIsNotJudged) {
  const auto noisy = stream(8, [](int i) { return i % 2 ? 9.0 : 6.0; });
  const SoakJudgement j = judge_soak(noisy, {});
  EXPECT_LE(j.drift_low, 0.05);
  EXPECT_GT(j.drift_high, 0.05);
  EXPECT_EQ(j.latency, SoakVerdict::kNotJudged);
  EXPECT_EQ(j.verdict, SoakVerdict::kNotJudged);
}

TEST(SoakJudgement, RssGrowthWithinASegmentFails) {
  auto v = stream(12, [](int) { return 7.0; });
  for (size_t i = 0; i < v.size(); ++i) v[i].rss_bytes += 200'000 * i;  // 2 MB by the end
  const SoakJudgement j = judge_soak(v, {});
  EXPECT_FALSE(j.rss_ok);
  EXPECT_EQ(j.rss_growth, 200'000 * 10);
  EXPECT_EQ(j.verdict, SoakVerdict::kFail);
}

TEST(SoakJudgement, CpuTimeDecidesWhereEveryCheckpointHasIt) {
  // Wall time 30 % slower by the end (the host got busy), CPU time flat: passes.
  auto v = stream(12, [](int i) { return 7.0 * (1.0 + 0.03 * i); });
  for (auto& c : v) c.cpu_ms_median = 6.5;
  SoakJudgement j = judge_soak(v, {});
  EXPECT_TRUE(j.latency_on_cpu);
  EXPECT_NEAR(j.drift, 0.0, 1e-9);
  EXPECT_EQ(j.latency, SoakVerdict::kPass);
  // CPU time 10 % slower: fails even where wall time is flat.
  for (size_t i = 0; i < v.size(); ++i) {
    v[i].latency_ms_median = 7.0;
    v[i].cpu_ms_median = 6.5 * (1.0 + 0.01 * static_cast<double>(i));
  }
  j = judge_soak(v, {});
  EXPECT_EQ(j.latency, SoakVerdict::kFail);
  // One judged checkpoint without it (an older log): wall time decides.
  v[5].cpu_ms_median = -1.0;
  j = judge_soak(v, {});
  EXPECT_FALSE(j.latency_on_cpu);
  EXPECT_EQ(j.latency, SoakVerdict::kPass);
}

TEST(SoakJudgement, AnonymousRssDecidesWhereEveryCheckpointHasIt) {
  // The whole RSS grows by 20 MB (mapped file pages faulted in), the anonymous part is flat.
  auto v = stream(12, [](int) { return 7.0; });
  for (size_t i = 0; i < v.size(); ++i) {
    v[i].rss_bytes += 2'000'000 * i;
    v[i].rss_anon_bytes = 60'000'000;
  }
  SoakJudgement j = judge_soak(v, {});
  EXPECT_TRUE(j.rss_anonymous);
  EXPECT_EQ(j.rss_growth, 0);
  EXPECT_TRUE(j.rss_ok);
  v.back().rss_anon_bytes += 1'500'000;
  j = judge_soak(v, {});
  EXPECT_EQ(j.rss_growth, 1'500'000);
  EXPECT_FALSE(j.rss_ok);
  v[3].rss_anon_bytes = 0;  // unknown at one checkpoint: the whole RSS decides
  j = judge_soak(v, {});
  EXPECT_FALSE(j.rss_anonymous);
  EXPECT_EQ(j.rss_growth, 2'000'000 * 10);
}

TEST(SoakJudgement, AResumedSegmentHasItsOwnBaseline) {
  auto v = stream(12, [](int) { return 7.0; });
  // Resumed after checkpoint 6: the new process sits 30 MB higher and, in its first
  // interval, 5 MB higher still (its start); from then on flat.
  for (size_t i = 6; i < v.size(); ++i) {
    v[i].segment = 1;
    v[i].rss_bytes += i == 6 ? 25'000'000 : 30'000'000;
  }
  SoakJudgement j = judge_soak(v, {});
  EXPECT_EQ(j.segments, 2);
  EXPECT_TRUE(j.rss_ok) << j.rss_growth;
  EXPECT_EQ(j.verdict, SoakVerdict::kPass);
  // The same growth without a resume is a failure.
  for (auto& c : v) c.segment = 0;
  j = judge_soak(v, {});
  EXPECT_FALSE(j.rss_ok);
  // And growth inside the resumed segment, past its first interval, is one too.
  for (size_t i = 6; i < v.size(); ++i) v[i].segment = 1;
  v.back().rss_bytes += 2'000'000;
  j = judge_soak(v, {});
  EXPECT_FALSE(j.rss_ok);
  EXPECT_EQ(j.rss_to, &v.back());
  EXPECT_EQ(j.rss_from, &v[7]);
}

TEST(SoakJudgement, AChangedCacheOrANonFiniteLogitFails) {
  auto v = stream(6, [](int) { return 7.0; });
  v[4].kv_bytes += 1;
  EXPECT_EQ(judge_soak(v, {}).verdict, SoakVerdict::kFail);
  auto w = stream(2, [](int) { return 7.0; });  // too short to judge
  EXPECT_EQ(judge_soak(w, {}).verdict, SoakVerdict::kNotJudged);
  w.back().nonfinite = 1;
  const SoakJudgement j = judge_soak(w, {});
  EXPECT_FALSE(j.judged);
  EXPECT_EQ(j.verdict, SoakVerdict::kFail);
}

}  // namespace
}  // namespace spillway::analysis
