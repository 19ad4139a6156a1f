// A persistent pool of worker threads for data-parallel loops. Threads are created once;
// a job allocates nothing. A job's items are split into one contiguous range per thread
// (the caller is thread 0). Each thread claims pieces of its own range from the front,
// in order, so that a thread streams through contiguous memory from one claim to the next
// (matrix rows: the prefetchers and the kernels' own prefetching carry over); a thread that
// has finished its range takes pieces from the back of the others' ranges. So a worker
// that is asleep or descheduled (a busy machine) delays nothing: whoever is running takes
// its items. The caller waits only for pieces already being worked on. Idle workers spin
// briefly (kSpinMicros) so that the back-to-back small jobs of a decode step cost no
// system calls, then sleep.
//
// Thread safety: the pool runs one job at a time. run() and parallel_for() may be called
// from any thread, also from several at once: the first caller's job gets the workers,
// and a call made while a job is running (from another thread, or from inside the job
// itself) runs all its items on the calling thread instead, without the workers, with
// the same results (items are independent and numbered, not tied to threads). So
// sessions may share one pool from different threads safely; they then take turns for
// the workers rather than running in parallel on them. For streams on their own threads
// that should each run in parallel, give each its own pool. The pool must outlive every
// call and is destroyed by one thread when no call is running.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace spillway {

class ThreadPool {
 public:
  // n_threads <= 0 means hardware concurrency. The pool runs n_threads - 1 workers.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(i, size()) once for every i in [0, size()), on up to size() threads at once
  // (the caller included), and returns when all calls have returned. Item i is thread i's
  // unless another thread takes it first, so i identifies the work item, not a thread:
  // per-item scratch indexed by i is safe. fn must not throw. A call while the pool is
  // busy runs every item on the caller (see above).
  template <class F>
  void run(F&& fn) {
    if (n_threads_ == 1) {
      fn(0, 1);
      return;
    }
    const int nth = n_threads_;
    auto body = [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) fn(static_cast<int>(i), nth);
    };
    dispatch(nth, &invoke<decltype(body)>, &body);
  }

  // Memory the next job will read on worker `thread` (1 <= thread < size()): up to
  // kHintRanges ranges, which that worker prefetches into its caches while it waits for
  // the job (a line from each range in turn), stopping when a job opens. The call is a few
  // stores: the caller goes on with its own work (the serial steps between two products)
  // while the worker, idle anyway, brings in its share of the next product. A later hint
  // replaces what is left of an earlier one, and a job drops it. Only a hint: the memory
  // is never read as data (a prefetch does not fault, so freed memory is harmless), a range
  // is cut at kHintMaxBytes, and a pool of one thread, a thread out of range or an
  // architecture without prefetch instructions ignores it.
  struct HintRange {
    const void* data = nullptr;
    size_t bytes = 0;
  };
  static constexpr int kHintRanges = 4;
  static constexpr size_t kHintMaxBytes = size_t{1} << 20;
  void prefetch_hint(int thread, const HintRange* ranges, int n);  // ranges[0..n)
  // Lines the workers have prefetched from hints so far.
  uint64_t hinted_lines() const;

  // Splits [0, n) into pieces aligned to `grain` and calls fn(begin, end) for each,
  // concurrently. Thread i's range is grains [G * i / size(), G * (i + 1) / size()) of the
  // G grains; it claims a quarter of what is left of it at a time (at least one grain, and
  // at least 1/32 of the range, so a thread makes a few dozen claims at most), in
  // increasing order. A thread done with its range takes half of what is left at the back
  // of another's, so at the end threads wait at most for the piece another thread is
  // working on.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    if (n_threads_ == 1 || n <= grain) {
      fn(int64_t{0}, n);
      return;
    }
    int64_t blocks = (n - 1) / grain + 1;
    if (blocks > kMaxBlocks) {  // grain numbers fit 32 bits: coarser grains, still aligned
      grain *= (blocks - 1) / kMaxBlocks + 1;
      blocks = (n - 1) / grain + 1;
    }
    auto body = [&](int64_t b0, int64_t b1) { fn(b0 * grain, std::min(n, b1 * grain)); };
    dispatch(blocks, &invoke<decltype(body)>, &body);
  }

 private:
  static constexpr int64_t kMaxBlocks = int64_t{1} << 31;
  static constexpr int64_t kSpinMicros = 200;

  template <class B>
  static void invoke(void* body, int64_t b0, int64_t b1) {
    (*static_cast<B*>(body))(b0, b1);
  }
  using BlockFn = void (*)(void*, int64_t, int64_t);

  // One thread's range of the current job's blocks: the front (next block its owner
  // claims) in the low 32 bits, the back (one past the last unclaimed block) in the high
  // 32; empty when front >= back.
  struct alignas(64) Range {
    std::atomic<uint64_t> bounds{0};
  };

  // Runs body(b0, b1) over pieces covering [0, n_blocks) on the caller and the workers,
  // or on the caller alone when another job holds the pool.
  void dispatch(int64_t n_blocks, BlockFn fn, void* body);
  // Claims and runs pieces of the current job, own range first, until none is left.
  void work(int self);
  void worker(int self);

  // A worker's posted hint: kHintRanges ranges as (address / 64 | line count << 42), 0 for
  // none; `fresh` is raised after the ranges are stored and taken by the worker.
  struct alignas(64) Hint {
    std::atomic<uint64_t> range[kHintRanges];
    std::atomic<bool> fresh{false};
    std::atomic<uint64_t> lines{0};  // prefetched so far; written by the worker only
  };
  // What a waiting worker has left to prefetch of its hint: line addresses [at, end).
  struct Pending {
    uintptr_t at[kHintRanges] = {};
    uintptr_t end[kHintRanges] = {};
    bool any = false;
  };
  // Takes a fresh hint into `p`; prefetches a few lines of `p`. Both on worker `self`.
  void take_hint(int self, Pending& p);
  static int prefetch_some(Pending& p);  // returns the lines prefetched

  int n_threads_;
  std::vector<std::thread> threads_;
  std::unique_ptr<Hint[]> hints_;  // [n_threads_]; [0] unused
  std::mutex mutex_;
  std::condition_variable wake_;  // idle workers sleep here
  std::condition_variable done_;  // the caller sleeps here when a piece takes long
  // The current job; written by the caller while no worker can be inside it.
  BlockFn job_fn_ = nullptr;
  void* job_body_ = nullptr;
  int64_t job_blocks_ = 0;
  std::unique_ptr<Range[]> ranges_;  // [n_threads_]
  // Odd while a job is open for claiming, even when closed.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};    // workers inside the open job
  std::atomic<int> sleepers_{0};  // workers blocked (or about to block) on wake_
  std::atomic<bool> caller_waiting_{false};
  std::atomic<bool> busy_{false};  // a caller owns the workers (its job is being set up or run)
  std::atomic<bool> stop_{false};
};

}  // namespace spillway
