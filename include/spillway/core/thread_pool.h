// A persistent pool of worker threads for data-parallel loops. Threads are created
// once; a parallel_for allocates nothing and wakes the workers through a generation
// counter, the calling thread taking part as worker 0. Workers spin for a short while
// (kSpinMicros) after each job before they sleep on a condition variable, so that the
// back-to-back small jobs of a decode step cost no system calls.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
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

  // Calls fn(thread_index, n_threads) once on every thread of the pool (the caller is
  // thread 0) and returns when all calls have returned. Not reentrant. fn must not throw.
  void run(const std::function<void(int, int)>& fn);

  // Splits [0, n) into contiguous chunks, one per thread, aligned to `grain`, and calls
  // fn(begin, end) for the non-empty ones.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n <= grain) {
      fn(int64_t{0}, n);
      return;
    }
    const int64_t blocks = (n + grain - 1) / grain;
    run([&](int ith, int nth) {
      const int64_t b0 = blocks * ith / nth, b1 = blocks * (ith + 1) / nth;
      const int64_t begin = b0 * grain, end = std::min(n, b1 * grain);
      if (begin < end) fn(begin, end);
    });
  }

 private:
  void worker(int index);

  // How long an idle worker polls for the next job before it sleeps (0 when the pool has
  // more threads than the machine has cores: spinning would steal their time).
  static constexpr int64_t kSpinMicros = 2000;
  int64_t spin_micros_ = kSpinMicros;

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;                                    // guards sleeping on wake_
  std::condition_variable wake_;                        // idle workers sleep here
  std::condition_variable done_;                        // run() sleeps here when workers take long
  const std::function<void(int, int)>* job_ = nullptr;  // set before generation_ moves
  std::atomic<uint64_t> generation_{0};                 // bumped once per run()
  std::atomic<int> pending_{0};                         // workers still running the current job
  std::atomic<int> sleepers_{0};             // workers blocked (or about to block) on wake_
  std::atomic<bool> caller_waiting_{false};  // run() blocked (or about to) on done_
  std::atomic<bool> stop_{false};
};

}  // namespace spillway
