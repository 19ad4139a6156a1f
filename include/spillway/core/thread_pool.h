// A persistent pool of worker threads for data-parallel loops. Threads are created once;
// a job allocates nothing. Work is split into chunks that the calling thread and the
// workers claim from a shared counter, so a worker that is asleep or descheduled (a busy
// machine) delays nothing: whoever is running takes its chunks. The caller waits only
// for chunks already being worked on. Idle workers spin briefly (kSpinMicros) so that the
// back-to-back small jobs of a decode step cost no system calls, then sleep.
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
  // (the caller included), and returns when all calls have returned. i identifies the
  // work item, not a thread: per-item scratch indexed by i is safe. fn must not throw.
  // A call while the pool is busy runs every item on the caller (see above).
  template <class F>
  void run(F&& fn) {
    if (n_threads_ == 1) {
      fn(0, 1);
      return;
    }
    const int nth = n_threads_;
    auto body = [&](int64_t c) { fn(static_cast<int>(c), nth); };
    dispatch(nth, &invoke<decltype(body)>, &body);
  }

  // Splits [0, n) into chunks aligned to `grain` and calls fn(begin, end) for each,
  // concurrently. Guided split: each chunk takes 1 / (2 * size()) of the grains not yet
  // handed out (at least one), so the first chunks are large (few claims) and the last
  // ones a single grain (a short wait for the slowest thread at the end). The price: a
  // descheduled worker holding the first chunk delays the job by up to 1 / (2 * size())
  // of it.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    if (n_threads_ == 1 || n <= grain) {
      fn(int64_t{0}, n);
      return;
    }
    const int64_t blocks = (n + grain - 1) / grain;
    int64_t bounds[kMaxChunks + 1];
    int64_t chunks = 0;
    for (int64_t b = 0; b < blocks; ++chunks) {
      bounds[chunks] = b;
      b = chunks + 2 == kMaxChunks ? blocks
                                   : b + std::max<int64_t>(1, (blocks - b) / (2 * n_threads_));
    }
    bounds[chunks] = blocks;
    auto body = [&](int64_t c) {
      const int64_t begin = bounds[c] * grain, end = std::min(n, bounds[c + 1] * grain);
      fn(begin, end);
    };
    dispatch(chunks, &invoke<decltype(body)>, &body);
  }

 private:
  static constexpr int64_t kMaxChunks = 64;
  static constexpr int64_t kSpinMicros = 200;

  template <class B>
  static void invoke(void* body, int64_t chunk) {
    (*static_cast<B*>(body))(chunk);
  }
  using ChunkFn = void (*)(void*, int64_t);

  // Runs body(c) for every c in [0, n_chunks) on the caller and the workers, or on the
  // caller alone when another job holds the pool.
  void dispatch(int64_t n_chunks, ChunkFn fn, void* body);
  // Claims and runs chunks of the current job until none is left.
  void work();
  void worker();

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;  // idle workers sleep here
  std::condition_variable done_;  // the caller sleeps here when a chunk takes long
  // The current job; written by the caller while no worker can be inside it.
  ChunkFn job_fn_ = nullptr;
  void* job_body_ = nullptr;
  int64_t job_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  // Odd while a job is open for claiming, even when closed.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};    // workers inside the open job
  std::atomic<int> sleepers_{0};  // workers blocked (or about to block) on wake_
  std::atomic<bool> caller_waiting_{false};
  std::atomic<bool> busy_{false};  // a caller owns the workers (its job is being set up or run)
  std::atomic<bool> stop_{false};
};

}  // namespace spillway
