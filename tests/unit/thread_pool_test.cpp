#include "spillway/core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
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

TEST(ThreadPool, ClaimsStayFewAndTheTailIsFine) {
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
      // A range takes 8 claims of a quarter of what is left, then at most 4 of 1/32 of it;
      // steals halve what is left, down to 1/32 of a range.
      EXPECT_LE(calls.load(), threads * (12 + 6 * (threads - 1))) << n;
      if (n <= 60) {
        EXPECT_GE(single.load(), 1) << n;  // small ranges end in single grains
      }
    }
  }
}

// The caller is thread 0 and owns the first range: the pieces it takes from it come in
// order, each starting where the previous one ended, from block 0 (unless a worker stole
// the whole range first). So a thread streams through contiguous memory across pieces.
// The items take a little time so that the workers join (with a split that hands out
// pieces in order from one counter, the caller's pieces then have gaps).
TEST(ThreadPool, OwnRangeIsTakenInOrder) {
  for (int threads : {2, 4}) {
    ThreadPool pool(threads);
    for (int round = 0; round < 20; ++round) {
      constexpr int64_t kN = 4000;
      const int64_t own_end = kN / threads;
      const std::thread::id caller = std::this_thread::get_id();
      std::vector<std::pair<int64_t, int64_t>> mine;  // written by the caller only
      std::atomic<uint64_t> sink{0};
      pool.parallel_for(kN, 1, [&](int64_t b, int64_t e) {
        if (std::this_thread::get_id() == caller && b < own_end) mine.emplace_back(b, e);
        uint64_t x = static_cast<uint64_t>(b);
        for (int64_t i = 0; i < (e - b) * 500; ++i) x = x * 6364136223846793005u + 1;
        sink += x;
      });
      if (mine.empty()) continue;
      EXPECT_EQ(mine.front().first, 0);
      for (size_t i = 1; i < mine.size(); ++i) {
        ASSERT_EQ(mine[i].first, mine[i - 1].second) << "round " << round << " piece " << i;
      }
    }
  }
}

// A worker stuck in its first piece leaves the rest of its range to the others: here the
// worker's first piece waits until the last block (the back of the worker's range) has
// been done, which only the caller, stealing, can do.
TEST(ThreadPool, StuckWorkersRangeIsStolen) {
  ThreadPool pool(2);
  constexpr int64_t kN = 1000;
  const std::thread::id caller = std::this_thread::get_id();
  for (int round = 0; round < 20; ++round) {
    std::atomic<bool> last_done{false};
    std::atomic<int64_t> by_caller{0};
    std::vector<std::atomic<int>> hits(kN);
    pool.parallel_for(kN, 1, [&](int64_t b, int64_t e) {
      if (std::this_thread::get_id() != caller) {
        while (!last_done.load()) std::this_thread::yield();
      } else {
        by_caller += e - b;
      }
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
      if (e == kN) last_done = true;
    });
    for (int64_t i = 0; i < kN; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << i;
    EXPECT_GT(by_caller.load(), kN / 2);  // its own range and more
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

// A waiting worker prefetches the memory a hint names: its count of hinted lines reaches
// the hint's. The worker sleeps after a short spin, so each try first wakes it with a job.
TEST(ThreadPool, AWaitingWorkerPrefetchesItsHint) {
  ThreadPool pool(2);
  std::vector<char> memory(size_t{64} << 10);
  const ThreadPool::HintRange range{memory.data(), memory.size()};
  const uint64_t lines = memory.size() / 64 + 1;  // + 1: the data need not start a line
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  uint64_t before = pool.hinted_lines();
  while (pool.hinted_lines() - before < memory.size() / 64 &&
         std::chrono::steady_clock::now() < deadline) {
    before = pool.hinted_lines();
    pool.run([](int, int) {});
    pool.prefetch_hint(1, &range, 1);
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  const uint64_t got = pool.hinted_lines() - before;
  EXPECT_GE(got, memory.size() / 64);
  EXPECT_LE(got, lines);
}

// Hints change no result and never fault: hints for the caller's thread, for threads that
// do not exist, past the range count, and of memory that is not there (a prefetch is no
// load) are ignored or harmless; jobs between them give what they give without hints.
TEST(ThreadPool, HintsChangeNothingAndNeverFault) {
  ThreadPool pool(3);
  std::vector<char> live(size_t{1} << 20);
  ThreadPool::HintRange ranges[ThreadPool::kHintRanges + 2];
  for (auto& r : ranges) r = {live.data(), live.size()};
  ranges[1] = {reinterpret_cast<const void*>(uintptr_t{64}), size_t{1} << 30};  // unmapped
  ranges[2] = {nullptr, 4096};
  for (int round = 0; round < 200; ++round) {
    for (int t = -1; t <= 4; ++t) pool.prefetch_hint(t, ranges, ThreadPool::kHintRanges + 2);
    std::vector<int> hits(1000, 0);
    pool.parallel_for(1000, 7, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
    });
    for (int h : hits) ASSERT_EQ(h, 1);
  }
  ThreadPool one(1);
  one.prefetch_hint(0, ranges, 1);
  EXPECT_EQ(one.hinted_lines(), 0u);
}

}  // namespace
}  // namespace spillway
