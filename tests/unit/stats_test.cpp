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
