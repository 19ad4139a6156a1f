// The order statistics (core/stats.h) and the process figures (core/process.h) that the
// benchmarks, the soak and the server report.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "spillway/core/process.h"
#include "spillway/core/stats.h"

namespace spillway {
namespace {

TEST(Stats, Median) {
  EXPECT_DOUBLE_EQ(stats::median({3, 1, 2, 10}), 2.5);
  EXPECT_DOUBLE_EQ(stats::median({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(stats::median({7}), 7);
  EXPECT_DOUBLE_EQ(stats::median({NAN, 4, NAN, 2}), 3);  // NaN left out
  EXPECT_TRUE(std::isnan(stats::median({})));
  EXPECT_TRUE(std::isnan(stats::median({NAN})));
}

TEST(Stats, NearestRankPercentile) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // 1..100, unsorted
  EXPECT_DOUBLE_EQ(stats::percentile(v, 99), 99);
  EXPECT_DOUBLE_EQ(stats::percentile(v, 50), 50);
  EXPECT_DOUBLE_EQ(stats::percentile(v, 100), 100);
  EXPECT_DOUBLE_EQ(stats::percentile(v, 0.5), 1);
  EXPECT_DOUBLE_EQ(stats::percentile(v, 0), 1);  // clamped
  EXPECT_DOUBLE_EQ(stats::percentile(v, 250), 100);
  EXPECT_DOUBLE_EQ(stats::percentile({5, 1, 3}, 50), 3);  // rank ceil(1.5) = 2
  EXPECT_DOUBLE_EQ(stats::percentile({5, NAN, 1}, 100), 5);
  EXPECT_TRUE(std::isnan(stats::percentile({}, 50)));
}

// The line and its slope's 95 % interval, against numpy's least squares for the same
// points (slope 1.99, intercept 0.05, standard error 0.0597216, t(3) = 3.182).
TEST(Stats, PairedDifferenceAndItsInterval) {
  // Differences 0.5, 0.1, 0.9, 0.2, 0.3: mean 0.4, sample variance 0.1, so the interval
  // is 0.4 -+ t(0.975, 4) sqrt(0.1 / 5) = 0.4 -+ 2.776 * 0.141421.
  const stats::PairedDifference d =
      stats::paired_difference({1, 2, 3, 4, 5}, {1.5, 2.1, 3.9, 4.2, 5.3});
  EXPECT_EQ(d.n, 5);
  EXPECT_NEAR(d.mean, 0.4, 1e-12);
  EXPECT_NEAR(d.low, 0.4 - 2.776 * std::sqrt(0.02), 1e-12);
  EXPECT_NEAR(d.high, 0.4 + 2.776 * std::sqrt(0.02), 1e-12);
  // Pairs with a NaN are left out; the shorter vector decides; a constant shift has a
  // zero-width interval; one pair has a mean and no interval.
  const double nan = std::nan("");
  const stats::PairedDifference e = stats::paired_difference({1, nan, 3, 4}, {2, 5, 4});
  EXPECT_EQ(e.n, 2);
  EXPECT_DOUBLE_EQ(e.mean, 1.0);
  EXPECT_DOUBLE_EQ(e.low, 1.0);
  EXPECT_DOUBLE_EQ(e.high, 1.0);
  const stats::PairedDifference one = stats::paired_difference({1}, {3});
  EXPECT_EQ(one.n, 1);
  EXPECT_DOUBLE_EQ(one.mean, 2.0);
  EXPECT_TRUE(std::isnan(one.low));
  EXPECT_EQ(stats::paired_difference({}, {}).n, 0);
}

TEST(Stats, LinearTrendAndItsInterval) {
  const stats::Trend t = stats::linear_trend({1, 2, 3, 4, 5}, {2.1, 3.9, 6.2, 7.8, 10.1});
  EXPECT_EQ(t.n, 5);
  EXPECT_NEAR(t.slope, 1.99, 1e-12);
  EXPECT_NEAR(t.intercept, 0.05, 1e-12);
  EXPECT_NEAR(t.slope_low, 1.799965944455561, 1e-9);
  EXPECT_NEAR(t.slope_high, 2.1800340555444384, 1e-9);
  // An exact line: a zero-width interval. NaN points are left out.
  const double nan = std::nan("");
  const stats::Trend e = stats::linear_trend({0, 1, nan, 2, 3}, {1, 3, 4, 5, 7});
  EXPECT_EQ(e.n, 4);
  EXPECT_DOUBLE_EQ(e.slope, 2.0);
  EXPECT_DOUBLE_EQ(e.slope_low, 2.0);
  EXPECT_DOUBLE_EQ(e.slope_high, 2.0);
  // Too few points, or no spread in x: no line.
  EXPECT_TRUE(std::isnan(stats::linear_trend({1, 2}, {1, 2}).slope));
  EXPECT_TRUE(std::isnan(stats::linear_trend({1, 1, 1}, {1, 2, 3}).slope));
  EXPECT_DOUBLE_EQ(stats::t95(1), 12.706);
  EXPECT_DOUBLE_EQ(stats::t95(30), 2.042);
  EXPECT_NEAR(stats::t95(1000), 1.9623, 0.001);  // t(0.975, 1000)
  EXPECT_NEAR(stats::t95(120), 1.9799, 0.001);
  EXPECT_TRUE(std::isnan(stats::t95(0)));
}

TEST(Process, ResidentBytesGrowWithTouchedMemory) {
  const uint64_t before = resident_bytes();
  ASSERT_GT(before, 0u);
  std::vector<char> block(64 << 20, 1);  // 64 MiB, written
  const uint64_t during = resident_bytes();
  EXPECT_GE(during, before + (48u << 20)) << "before " << before << ", during " << during;
  EXPECT_GE(peak_resident_bytes(), during);
  EXPECT_EQ(block[12345], 1);
}

}  // namespace
}  // namespace spillway
