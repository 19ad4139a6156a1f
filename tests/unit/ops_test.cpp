// Row ops against straightforward double-precision formulas, and RoPE's exactness at huge
// positions (the relative-position property the sink cache relies on).
#include "spillway/ops/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ops/kernels.h"
#include "spillway/core/error.h"
#include "spillway/ops/matmul.h"
#include "util/families.h"

namespace spillway::ops {
namespace {

std::vector<float> random_vec(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

TEST(Ops, RmsnormMatchesFormula) {
  for (int64_t n : {1, 7, 8, 9, 576, 1001}) {
    const auto x = random_vec(n, 1 + static_cast<uint32_t>(n));
    const auto w = random_vec(n, 2 + static_cast<uint32_t>(n));
    std::vector<float> y(x.size());
    rmsnorm(x.data(), w.data(), y.data(), n, 1e-5f);
    double ss = 0.0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double scale = 1.0 / std::sqrt(ss / static_cast<double>(n) + 1e-5);
    for (int64_t i = 0; i < n; ++i) {
      const double ref = x[i] * scale * w[i];
      EXPECT_NEAR(y[i], ref, 1e-5 * std::fabs(ref) + 1e-7) << n << " " << i;
    }
    // In place.
    std::vector<float> z = x;
    rmsnorm(z.data(), w.data(), z.data(), n, 1e-5f);
    EXPECT_EQ(z, y);
  }
}

// Tolerance: silu and softmax use a polynomial exp with relative error below 1e-6;
// with the division / normalization on top we test 2e-6 relative.
TEST(Ops, SwigluMatchesFormula) {
  for (int64_t n : {1, 5, 8, 13, 1536}) {
    auto gate = random_vec(n, 3 + static_cast<uint32_t>(n), 4.0f);
    const auto up = random_vec(n, 4 + static_cast<uint32_t>(n));
    if (n > 2) {
      gate[0] = -30.0f;
      gate[1] = 30.0f;
    }
    const auto g0 = gate;
    swiglu(gate.data(), up.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double g = g0[i];
      const double ref = g / (1.0 + std::exp(-g)) * up[i];
      EXPECT_NEAR(gate[i], ref, 2e-6 * std::fabs(ref) + 1e-30) << n << " " << i << " g " << g;
    }
  }
}

TEST(Ops, SwigluOfVeryNegativeGatesIsTiny) {
  std::vector<float> gate = {-100.0f, -1000.0f, -1e30f, -std::numeric_limits<float>::infinity()};
  std::vector<float> up(gate.size(), 1.0f);
  swiglu(gate.data(), up.data(), static_cast<int64_t>(gate.size()));
  for (size_t i = 0; i + 1 < gate.size(); ++i) {
    EXPECT_LE(std::fabs(gate[i]), 1e-30f) << i;
    EXPECT_FALSE(std::isnan(gate[i])) << i;
  }
}

TEST(Ops, SoftmaxMatchesFormula) {
  for (int64_t n : {1, 3, 8, 17, 4096}) {
    auto x = random_vec(n, 5 + static_cast<uint32_t>(n), 5.0f);
    const auto x0 = x;
    softmax(x.data(), n);
    double mx = -INFINITY;
    for (float v : x0) mx = std::max(mx, static_cast<double>(v));
    double sum = 0.0;
    for (float v : x0) sum += std::exp(v - mx);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double ref = std::exp(x0[i] - mx) / sum;
      EXPECT_NEAR(x[i], ref, 2e-6 * ref + 1e-12) << n << " " << i;
      total += x[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST(Ops, SoftmaxGivesMaskedEntriesExactlyZero) {
  std::vector<float> x = {1.0f, -INFINITY, 2.0f, -1e30f, 0.5f, -INFINITY, 3.0f, 1.0f, -INFINITY};
  softmax(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(x[1], 0.0f);
  EXPECT_EQ(x[3], 0.0f);
  EXPECT_EQ(x[5], 0.0f);
  EXPECT_EQ(x[8], 0.0f);
  EXPECT_GT(x[6], x[2]);
}

// Double-precision reference rotation.
std::vector<double> rope_ref(const std::vector<float>& x, int64_t n_head, int64_t head_dim,
                             int64_t n_rot, int64_t pos, double base) {
  std::vector<double> y(x.begin(), x.end());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < n_rot / 2; ++i) {
      const double theta = static_cast<double>(pos) * std::pow(base, -2.0 * i / n_rot);
      const double c = std::cos(theta), s = std::sin(theta);
      const double x0 = x[h * head_dim + 2 * i], x1 = x[h * head_dim + 2 * i + 1];
      y[h * head_dim + 2 * i] = x0 * c - x1 * s;
      y[h * head_dim + 2 * i + 1] = x0 * s + x1 * c;
    }
  }
  return y;
}

TEST(Ops, RopeMatchesDoubleReferenceAtHugePositions) {
  const int64_t n_head = 3, head_dim = 64;
  for (int64_t n_rot : {64, 32}) {
    for (int64_t pos : {int64_t{0}, int64_t{1}, int64_t{17}, int64_t{4095}, int64_t{10'000'000},
                        int64_t{123'456'789}}) {
      auto x = random_vec(n_head * head_dim, 7);
      const auto ref = rope_ref(x, n_head, head_dim, n_rot, pos, 10000.0);
      rope(x.data(), n_head, head_dim, n_rot, pos, 10000.0, 1.0);
      for (size_t i = 0; i < x.size(); ++i) {
        EXPECT_NEAR(x[i], ref[i], 1e-6 * (1.0 + std::fabs(ref[i]))) << "pos " << pos << " " << i;
      }
    }
  }
}

TEST(Ops, RopeWithEqualsRope) {
  const int64_t n_head = 2, head_dim = 64, n_rot = 64;
  std::vector<double> inv(n_rot / 2);
  for (int64_t i = 0; i < n_rot / 2; ++i) inv[i] = 0.5 * std::pow(50000.0, -2.0 * i / n_rot);
  auto a = random_vec(n_head * head_dim, 9);
  auto b = a;
  rope(a.data(), n_head, head_dim, n_rot, 777, 50000.0, 0.5);
  rope_with(b.data(), n_head, head_dim, n_rot, 777, inv.data());
  EXPECT_EQ(a, b);
}

float dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(s);
}

// Rotates with angles computed in float: what the double-angle code must beat.
void rope_float_angles(std::vector<float>& x, int64_t head_dim, int64_t pos) {
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float theta =
        static_cast<float>(pos) * std::pow(10000.0f, -2.0f * static_cast<float>(i) / head_dim);
    const float c = std::cos(theta), s = std::sin(theta);
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x0 * s + x1 * c;
  }
}

TEST(Ops, RopeScoresDependOnlyOnDistanceEvenAtTenMillion) {
  const int64_t head_dim = 64;
  const auto q = random_vec(head_dim, 11), k = random_vec(head_dim, 12);
  const double norm = std::sqrt(dot(q, q)) * std::sqrt(dot(k, k));
  auto score = [&](int64_t p, int64_t m) {
    auto qr = q, kr = k;
    rope(qr.data(), 1, head_dim, head_dim, p, 10000.0, 1.0);
    rope(kr.data(), 1, head_dim, head_dim, m, 10000.0, 1.0);
    return dot(qr, kr);
  };
  const float near = score(20, 0);
  const float far = score(10'000'020, 10'000'000);
  EXPECT_NEAR(far, near, 1e-5 * norm);
  EXPECT_NEAR(score(10'000'000, 9'999'980), near, 1e-5 * norm);
  // The test can fail: float angles lose the distance at this position.
  auto qf = q, kf = k;
  rope_float_angles(qf, head_dim, 10'000'020);
  rope_float_angles(kf, head_dim, 10'000'000);
  EXPECT_GT(std::fabs(dot(qf, kf) - near), 1e-4 * norm);
}

TEST(Ops, RopeLeavesUnrotatedDimsAndRejectsBadSizes) {
  auto x = random_vec(2 * 64, 13);
  const auto x0 = x;
  rope(x.data(), 2, 64, 16, 12345, 10000.0, 1.0);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 16; i < 64; ++i) EXPECT_EQ(x[h * 64 + i], x0[h * 64 + i]);
    EXPECT_NE(x[h * 64], x0[h * 64]);
  }
  EXPECT_THROW(rope(x.data(), 2, 64, 15, 0, 10000.0, 1.0), InvalidArgument);
  EXPECT_THROW(rope(x.data(), 2, 64, 66, 0, 10000.0, 1.0), InvalidArgument);
}

// Every family's row ops against the scalar family's at odd sizes (masked and scalar
// tails, one vector and many): rmsnorm within 1e-5 relative (sums in another order),
// swiglu within 2e-6 relative (the polynomial exp against std::exp), softmax and geglu
// within 1e-5: their exp arguments reach -15 (softmax, x - max) and about -50 (geglu, -2u)
// here, where the two exps part further and geglu's argument is rounded differently
// (fused or not).
// Every wider family's swiglu and geglu compute each element as the AVX2 ones do (the
// same row_ops.h formula; geglu: as the AVX2 8-lane body does): equal bit for bit.
void expect_row_ops_match_scalar(KernelIsa isa) {
  const detail::Kernels& ref = detail::kernels_for(KernelIsa::kScalar);
  const detail::Kernels& k = detail::kernels_for(isa);
  for (int64_t n : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 576, 640, 1001, 1536}) {
    SCOPED_TRACE(::testing::Message() << isa_name(isa) << " n " << n);
    const uint32_t seed = 40 + static_cast<uint32_t>(n);
    const auto x = random_vec(n, seed, 3.0f);
    const auto w = random_vec(n, seed + 1);
    std::vector<float> y(x.size()), yr(x.size());
    k.rmsnorm(x.data(), w.data(), y.data(), n, 1e-6f);
    ref.rmsnorm(x.data(), w.data(), yr.data(), n, 1e-6f);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(y[i], yr[i], 1e-5 * std::fabs(yr[i]) + 1e-30) << "rmsnorm at " << i;
    }
    auto s = random_vec(n, seed + 2, 6.0f);
    if (n > 4) s[3] = -INFINITY;  // a masked entry
    std::vector<float> sr = s;
    k.softmax(s.data(), n);
    ref.softmax(sr.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(s[i], sr[i], 1e-5 * sr[i] + 1e-12) << "softmax at " << i;
    }
    if (n > 4) {
      ASSERT_EQ(s[3], 0.0f);
    }
    for (bool gelu : {false, true}) {
      auto g = random_vec(n, seed + 3, 4.0f);
      if (n > 2) {
        g[0] = -30.0f;
        g[1] = 30.0f;
      }
      std::vector<float> gr = g, g2 = g;
      (gelu ? k.geglu : k.swiglu)(g.data(), w.data(), n);
      (gelu ? ref.geglu : ref.swiglu)(gr.data(), w.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(g[i], gr[i], (gelu ? 1e-5 : 2e-6) * std::fabs(gr[i]) + 1e-30)
            << (gelu ? "geglu" : "swiglu") << " at " << i;
      }
      if (isa != KernelIsa::kAvx2) {
        const detail::Kernels& avx2 = detail::kernels_for(KernelIsa::kAvx2);
        (gelu ? avx2.geglu : avx2.swiglu)(g2.data(), w.data(), n);
        // AVX2's scalar tail of geglu (n % 8 elements) orders the cubic term differently.
        const int64_t same = gelu ? n / 8 * 8 : n;
        ASSERT_EQ(std::memcmp(g.data(), g2.data(), static_cast<size_t>(same) * sizeof(float)), 0)
            << (gelu ? "geglu" : "swiglu") << " differs from avx2";
      }
    }
  }
}

class RowOpsFamily : public ::testing::TestWithParam<KernelIsa> {};

TEST_P(RowOpsFamily, MatchesScalar) {
  SPILLWAY_SKIP_UNLESS_RUNS(GetParam());
  expect_row_ops_match_scalar(GetParam());
}

INSTANTIATE_TEST_SUITE_P(EveryFamily, RowOpsFamily, ::testing::ValuesIn(test::simd_families()),
                         test::FamilyName());

}  // namespace
}  // namespace spillway::ops
