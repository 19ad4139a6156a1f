// A persistent pool of worker threads for data-parallel loops. Threads are created
// once; a parallel_for allocates nothing and wakes the workers through a generation
// counter, the calling thread taking part as worker 0.
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

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace spillway
