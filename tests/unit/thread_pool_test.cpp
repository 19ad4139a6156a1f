#include "spillway/core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
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

TEST(ThreadPool, GuidedChunksShrinkAndStayFew) {
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {60, 1000, 1000000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> calls{0}, single{0};
      pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
        calls++;
        if (e - b == 1) single++;
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << i;
      EXPECT_LE(calls.load(), 64) << n;  // few claims even for a million grains
      if (n <= 1000) {
        EXPECT_GE(single.load(), threads) << n;  // the tail is fine-grained
      }
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

// Several threads calling one pool at once: each call still covers its indices exactly
// once (the callers that find the pool busy run their jobs alone).
TEST(ThreadPool, ConcurrentCallersEachGetWholeJobs) {
  ThreadPool pool(3);
  constexpr int kCallers = 4, kRounds = 300;
  constexpr int64_t kN = 257;
  std::vector<std::thread> callers;
  std::atomic<int> bad{0};
  for (int c = 0; c < kCallers; ++c)
    callers.emplace_back([&] {
      std::vector<int> hits(kN);
      for (int round = 0; round < kRounds; ++round) {
        std::fill(hits.begin(), hits.end(), 0);
        pool.parallel_for(kN, 8, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;  // disjoint ranges
        });
        for (int h : hits) bad += h != 1;
        std::atomic<int> mask{0};
        pool.run([&](int ith, int nth) { mask |= 1 << ith; });
        bad += mask.load() != 0x7;
      }
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(bad.load(), 0);
}

// A job that calls the pool again runs the inner job on its own thread, to completion.
TEST(ThreadPool, NestedCallRunsInline) {
  ThreadPool pool(2);
  std::atomic<int> inner{0};
  pool.run([&](int, int) {
    pool.parallel_for(100, 10, [&](int64_t b, int64_t e) { inner += static_cast<int>(e - b); });
  });
  EXPECT_EQ(inner.load(), 200);
}

}  // namespace
}  // namespace spillway
