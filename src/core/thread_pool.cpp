#include "spillway/core/thread_pool.h"

#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace spillway {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0)
    n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  threads_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this] { worker(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  { std::lock_guard<std::mutex> lock(mutex_); }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::work() {
  for (;;) {
    const int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
    if (c >= job_chunks_) return;
    job_fn_(job_body_, c);
  }
}

void ThreadPool::dispatch(int64_t n_chunks, ChunkFn fn, void* body) {
  // Another caller (another thread, or this job calling back in) holds the workers: run
  // this job here, alone. Acquire/release pair the job fields of successive owners.
  if (busy_.exchange(true, std::memory_order_acquire)) {
    for (int64_t c = 0; c < n_chunks; ++c) fn(body, c);
    return;
  }
  // No worker is inside a job here (the previous dispatch waited for active_ == 0 after
  // closing it), so the job fields can be written.
  job_fn_ = fn;
  job_body_ = body;
  job_chunks_ = n_chunks;
  next_chunk_.store(0, std::memory_order_relaxed);
  generation_.fetch_add(1);  // open (odd); seq_cst, read by workers before they join
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    wake_.notify_all();
  }
  work();
  // Close the job, then wait for the workers that joined it. A worker joins by raising
  // active_ and then re-reading generation_: with both sides seq_cst, either it sees the
  // close and leaves, or this thread sees it in active_ and waits for it.
  generation_.fetch_add(1);
  for (int spins = 0; active_.load() != 0; ++spins) {
    if (spins < 4096) {
      cpu_relax();
    } else if (spins < 4096 + 64) {
      std::this_thread::yield();
    } else {
      std::unique_lock<std::mutex> lock(mutex_);
      caller_waiting_.store(true);
      done_.wait(lock, [this] { return active_.load() == 0; });
      caller_waiting_.store(false);
      break;
    }
  }
  busy_.store(false, std::memory_order_release);
}

void ThreadPool::worker() {
  using Clock = std::chrono::steady_clock;
  uint64_t seen = 0;
  for (;;) {
    // Wait for a newly opened job.
    uint64_t gen = generation_.load();
    if ((gen & 1) == 0 || gen == seen) {
      const auto deadline = Clock::now() + std::chrono::microseconds(kSpinMicros);
      for (int spins = 0;; ++spins) {
        if (stop_.load(std::memory_order_relaxed)) return;
        gen = generation_.load();
        if ((gen & 1) == 1 && gen != seen) break;
        cpu_relax();
        if ((spins & 63) == 63 && Clock::now() > deadline) {
          std::unique_lock<std::mutex> lock(mutex_);
          sleepers_.fetch_add(1);
          wake_.wait(lock, [&] {
            const uint64_t g = generation_.load();
            return stop_.load() || ((g & 1) == 1 && g != seen);
          });
          sleepers_.fetch_sub(1);
          if (stop_.load()) return;
          gen = generation_.load();
          break;
        }
      }
    }
    // Woken from the condition variable, gen was read again after the predicate held: the
    // job may have closed since (gen even) and must not be joined. Joining a closed job
    // would enter work() uncounted by the caller, which may then set up the next job's
    // fields while this thread reads them (a race ThreadSanitizer found).
    if ((gen & 1) == 0 || gen == seen) continue;
    seen = gen;
    active_.fetch_add(1);
    if (generation_.load() == gen) work();
    if (active_.fetch_sub(1) == 1 && caller_waiting_.load()) {
      { std::lock_guard<std::mutex> lock(mutex_); }
      done_.notify_one();
    }
  }
}

}  // namespace spillway
