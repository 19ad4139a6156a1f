// The positions contract a billion tokens into a stream. Every key is rotated once at its
// stream index and each query at its range's query position (kv/policy.h), so RoPE sees
// positions near 1e9 under every policy and either positions= mode; what keeps the
// distances exact is that angles are computed in double (ops.h). Here the sink policy's
// plan at stream index ~1e9 (reached with Policy::seek, after checking that a sought
// policy plans exactly as one that planned every token) is compared with the naive
// computation: keys un-rotated, each rotated by its rank in the span, the query by the
// span's last rank. Integer positions must match exactly; attention scores within the
// float rounding of one rotation, the same bound as a few thousand tokens in.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/kv/policy.h"
#include "spillway/ops/ops.h"

namespace spillway::kv {
namespace {

constexpr int64_t kHeadDim = 64;
constexpr double kRopeBase = 100000.0;  // SmolLM2's rope.freq_base

std::vector<double> inv_freq() {
  std::vector<double> f(kHeadDim / 2);
  for (int64_t i = 0; i < kHeadDim / 2; ++i)
    f[i] = std::pow(kRopeBase, -2.0 * static_cast<double>(i) / kHeadDim);
  return f;
}

// A fixed random vector per stream index (keys) or per query.
std::vector<float> vec(uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 7);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(kHeadDim);
  for (float& x : v) x = d(rng);
  return v;
}

float dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(s);
}

std::vector<float> rotated(std::vector<float> v, int64_t pos, const std::vector<double>& f) {
  ops::rope_with(v.data(), 1, kHeadDim, kHeadDim, pos, f.data());
  return v;
}

// RoPE with the angle formed in float, as a kernel that skipped the double would: the
// contrast that shows the comparison below can fail.
std::vector<float> rotated_float_angles(std::vector<float> v, int64_t pos,
                                        const std::vector<double>& f) {
  for (int64_t i = 0; i < kHeadDim / 2; ++i) {
    const float a = static_cast<float>(pos) * static_cast<float>(f[i]);
    const float c = std::cos(a), s = std::sin(a);
    const float x0 = v[2 * i], x1 = v[2 * i + 1];
    v[2 * i] = x0 * c - x1 * s;
    v[2 * i + 1] = x0 * s + x1 * c;
  }
  return v;
}

struct Deviation {
  double max_pos_error = 0;    // positions: |engine distance - naive distance|, must be 0
  double max_score_error = 0;  // scores: max |engine - naive| / (|q| |k|)
  double max_float_angle_error = 0;
};

// Token n under `spec` (its policy already at n): the plan's positions and scores against
// the naive rank positions. Keys: the stream indices the contract says token n attends.
Deviation check_token(Policy& p, int64_t n, int64_t sinks, int64_t window, bool absolute) {
  const auto f = inv_freq();
  BatchPlan plan;
  p.plan(n, 1, plan);
  const TokenPlan& t = plan.tokens.at(0);
  EXPECT_EQ(t.key_pos, n);  // keys are rotated at their stream index

  // The span by the contract (docs/architecture.md): 0..S-1 and max(S, n-W+1)..n.
  std::vector<int64_t> span;
  for (int64_t m = 0; m < std::min(sinks, n + 1); ++m) span.push_back(m);
  for (int64_t m = std::max(sinks, n - window + 1); m <= n; ++m) span.push_back(m);
  // Which stream index each slot holds: slot_contents() after token n's write.
  const std::vector<int64_t> contents = p.slot_contents();
  std::vector<std::pair<int64_t, int64_t>> attended;  // (stream index, query position)
  for (int32_t r = t.range_begin; r < t.range_end; ++r)
    for (int32_t s = plan.ranges[r].begin; s < plan.ranges[r].end; ++s)
      attended.emplace_back(contents.at(static_cast<size_t>(s)), plan.ranges[r].query_pos);
  std::sort(attended.begin(), attended.end());
  EXPECT_EQ(attended.size(), span.size());
  Deviation d;
  const auto q = vec(~static_cast<uint64_t>(n));
  const int64_t last_rank = static_cast<int64_t>(span.size()) - 1;
  for (size_t rank = 0; rank < std::min(span.size(), attended.size()); ++rank) {
    const auto [m, qpos] = attended[rank];
    EXPECT_EQ(m, span[rank]) << "rank " << rank;
    // Naive positions: key at its rank, query at the last rank (cache); stream indices
    // (absolute).
    const int64_t naive_k = absolute ? m : static_cast<int64_t>(rank);
    const int64_t naive_q = absolute ? n : last_rank;
    d.max_pos_error = std::max<double>(
        d.max_pos_error, static_cast<double>(std::llabs((qpos - m) - (naive_q - naive_k))));
    const auto k = vec(static_cast<uint64_t>(m));
    const double norm = std::sqrt(dot(q, q)) * std::sqrt(dot(k, k));
    const float engine = dot(rotated(q, qpos, f), rotated(k, m, f));
    const float naive = dot(rotated(q, naive_q, f), rotated(k, naive_k, f));
    d.max_score_error = std::max(d.max_score_error, std::abs(engine - naive) / norm);
    const float engine_f = dot(rotated_float_angles(q, qpos, f), rotated_float_angles(k, m, f));
    d.max_float_angle_error = std::max(d.max_float_angle_error, std::abs(engine_f - naive) / norm);
  }
  return d;
}

TEST(DeepStream, SeekPlansExactlyAsPlanningEveryToken) {
  auto walked = make_policy(kv::PolicySpec("sink:4+60"));
  BatchPlan scratch;
  for (int64_t n = 0; n < 1000; ++n) {
    scratch.clear();
    walked->plan(n, 1, scratch);
  }
  auto sought = make_policy(kv::PolicySpec("sink:4+60"));
  sought->seek(1000);
  EXPECT_EQ(sought->slot_contents(), walked->slot_contents());
  for (int64_t n = 1000; n < 1300; ++n) {
    BatchPlan a, b;
    walked->plan(n, 1, a);
    sought->plan(n, 1, b);
    ASSERT_EQ(a.ranges.size(), b.ranges.size());
    for (size_t r = 0; r < a.ranges.size(); ++r) {
      EXPECT_EQ(a.ranges[r].begin, b.ranges[r].begin);
      EXPECT_EQ(a.ranges[r].end, b.ranges[r].end);
      EXPECT_EQ(a.ranges[r].query_pos, b.ranges[r].query_pos);
    }
    EXPECT_EQ(a.tokens[0].write_slot, b.tokens[0].write_slot);
  }
  EXPECT_THROW(sought->seek(5), InvalidArgument);  // backwards
  EXPECT_THROW(make_policy(kv::PolicySpec("h2o:4+12"))->seek(100),
               InvalidArgument);  // not seekable
}

// Rounding bound of one rotated dot product in float: a few float epsilons of |q| |k|.
constexpr double kScoreBound = 2e-6;

TEST(DeepStream, PositionsAndScoresExactAtABillionTokens) {
  for (const bool absolute : {false, true}) {
    for (const auto& [s, w] : {std::pair<int64_t, int64_t>{4, 1020}, {1, 63}, {0, 256}}) {
      const std::string spec = (s > 0 ? "sink:" + std::to_string(s) + "+" : "window:") +
                               std::to_string(w) + (absolute ? ",positions=absolute" : "");
      Deviation shallow, deep;
      for (const int64_t start : {int64_t{3000}, int64_t{1'000'000'000}}) {
        auto p = make_policy(kv::PolicySpec(spec));
        p->seek(start);
        Deviation& d = start < 1'000'000 ? shallow : deep;
        for (int64_t n = start; n < start + 3; ++n) {
          const Deviation t = check_token(*p, n, s, w, absolute);
          d.max_pos_error = std::max(d.max_pos_error, t.max_pos_error);
          d.max_score_error = std::max(d.max_score_error, t.max_score_error);
          d.max_float_angle_error = std::max(d.max_float_angle_error, t.max_float_angle_error);
        }
      }
      EXPECT_EQ(deep.max_pos_error, 0) << spec;
      EXPECT_EQ(shallow.max_pos_error, 0) << spec;
      EXPECT_LE(deep.max_score_error, kScoreBound) << spec;
      EXPECT_LE(shallow.max_score_error, kScoreBound) << spec;
      // Angles formed in float are fine a few thousand tokens in, and wrong at 1e9.
      EXPECT_LE(shallow.max_float_angle_error, 1e-3) << spec;
      EXPECT_GT(deep.max_float_angle_error, 100 * kScoreBound) << spec;
      RecordProperty(spec + " deep score error", std::to_string(deep.max_score_error));
    }
  }
}

}  // namespace
}  // namespace spillway::kv
