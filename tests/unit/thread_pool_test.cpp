#include "spillway/core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace spillway {
namespace {

TEST(ThreadPool, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 7, 64, 1000, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.parallel_for(n, 16, [&](int64_t b, int64_t e) {
        EXPECT_LT(b, e);
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
      });
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[static_cast<size_t>(i)].load(), 1) << i;
    }
  }
}

TEST(ThreadPool, ChunksAreAlignedToGrain) {
  ThreadPool pool(3);
  pool.parallel_for(1000, 32, [&](int64_t b, int64_t e) {
    EXPECT_EQ(b % 32, 0);
    EXPECT_TRUE(e == 1000 || e % 32 == 0);
  });
}

TEST(ThreadPool, RunCallsEveryThreadRepeatedly) {
  ThreadPool pool(4);
  for (int round = 0; round < 200; ++round) {
    std::atomic<int> mask{0};
    pool.run([&](int ith, int nth) {
      EXPECT_EQ(nth, 4);
      mask |= 1 << ith;
    });
    ASSERT_EQ(mask.load(), 0xF);
  }
}

}  // namespace
}  // namespace spillway
