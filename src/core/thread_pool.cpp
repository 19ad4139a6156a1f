#include "spillway/core/thread_pool.h"

#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace spillway {

namespace {

constexpr uint64_t pack(int64_t front, int64_t back) {
  return static_cast<uint64_t>(front) | (static_cast<uint64_t>(back) << 32);
}
constexpr int64_t front_of(uint64_t v) {
  return static_cast<int64_t>(v & 0xFFFFFFFFu);
}
constexpr int64_t back_of(uint64_t v) {
  return static_cast<int64_t>(v >> 32);
}

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
  ranges_ = std::make_unique<Range[]>(static_cast<size_t>(n_threads_));
  hints_ = std::make_unique<Hint[]>(static_cast<size_t>(n_threads_));
  threads_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  { std::lock_guard<std::mutex> lock(mutex_); }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

namespace {

constexpr uint64_t kLine = 64;
constexpr int kLineCountShift = 42;  // hint words: line index (address / 64) | count << 42

}  // namespace

void ThreadPool::prefetch_hint(int thread, const HintRange* ranges, int n) {
  if (thread < 1 || thread >= n_threads_ || n < 0) return;
  Hint& h = hints_[static_cast<size_t>(thread)];
  for (int i = 0; i < kHintRanges; ++i) {
    uint64_t word = 0;
    if (i < n && ranges[i].data != nullptr && ranges[i].bytes > 0) {
      const auto first = reinterpret_cast<uintptr_t>(ranges[i].data) / kLine;
      const uint64_t lines = (std::min(ranges[i].bytes, kHintMaxBytes) + kLine - 1) / kLine;
      if ((uint64_t{first} >> kLineCountShift) == 0) word = first | (lines << kLineCountShift);
    }
    h.range[i].store(word, std::memory_order_relaxed);
  }
  h.fresh.store(true, std::memory_order_release);
}

void ThreadPool::take_hint(int self, Pending& p) {
  Hint& h = hints_[static_cast<size_t>(self)];
  if (!h.fresh.load(std::memory_order_relaxed) ||
      !h.fresh.exchange(false, std::memory_order_acquire))
    return;
  p.any = false;
  for (int i = 0; i < kHintRanges; ++i) {
    const uint64_t word = h.range[i].load(std::memory_order_relaxed);
    const uint64_t first = word & ((uint64_t{1} << kLineCountShift) - 1);
    p.at[i] = static_cast<uintptr_t>(first * kLine);
    p.end[i] = static_cast<uintptr_t>((first + (word >> kLineCountShift)) * kLine);
    p.any = p.any || p.at[i] < p.end[i];
  }
}

uint64_t ThreadPool::hinted_lines() const {
  uint64_t n = 0;
  for (int i = 1; i < n_threads_; ++i)
    n += hints_[static_cast<size_t>(i)].lines.load(std::memory_order_relaxed);
  return n;
}

int ThreadPool::prefetch_some(Pending& p) {
  // A line from each range in turn, a few per call, so that the waiting worker looks at
  // generation_ again soon.
  constexpr int kPerCall = 8;
  int issued = 0;
  while (issued < kPerCall) {
    bool left = false;
    for (int i = 0; i < kHintRanges; ++i) {
      if (p.at[i] >= p.end[i]) continue;
#if defined(__GNUC__)
      __builtin_prefetch(reinterpret_cast<const void*>(p.at[i]), 0, 2);
#endif
      p.at[i] += kLine;
      ++issued;
      left = left || p.at[i] < p.end[i];
    }
    if (!left) {
      p.any = false;
      break;
    }
  }
  return issued;
}

void ThreadPool::work(int self) {
  // Claims only partition the blocks (relaxed); what the pieces write is published by the
  // job's close (see dispatch).
  const int nth = n_threads_;
  // The fewest blocks a claim on thread i's range takes: 1/32 of the range.
  const auto min_claim = [&](int i) {
    return std::max<int64_t>(1, (job_blocks_ * (i + 1) / nth - job_blocks_ * i / nth) / 32);
  };
  Range& own = ranges_[static_cast<size_t>(self)];
  const int64_t own_min = min_claim(self);
  uint64_t v = own.bounds.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t f = front_of(v), b = back_of(v);
    if (f >= b) break;
    const int64_t k = std::min(b - f, std::max((b - f) / 4, own_min));
    if (own.bounds.compare_exchange_weak(v, pack(f + k, b), std::memory_order_relaxed)) {
      job_fn_(job_body_, f, f + k);
      v = own.bounds.load(std::memory_order_relaxed);
    }
  }
  for (int d = 1; d < nth; ++d) {
    const int victim = (self + d) % nth;
    Range& other = ranges_[static_cast<size_t>(victim)];
    const int64_t other_min = min_claim(victim);
    v = other.bounds.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t f = front_of(v), b = back_of(v);
      if (f >= b) break;
      const int64_t k = std::min(b - f, std::max((b - f) / 2, other_min));
      if (other.bounds.compare_exchange_weak(v, pack(f, b - k), std::memory_order_relaxed)) {
        job_fn_(job_body_, b - k, b);
        v = other.bounds.load(std::memory_order_relaxed);
      }
    }
  }
}

void ThreadPool::dispatch(int64_t n_blocks, BlockFn fn, void* body) {
  // Another caller (another thread, or this job calling back in) holds the workers: run
  // this job here, alone. Acquire/release pair the job fields of successive owners.
  if (busy_.exchange(true, std::memory_order_acquire)) {
    fn(body, 0, n_blocks);
    return;
  }
  // No worker is inside a job here (the previous dispatch waited for active_ == 0 after
  // closing it), so the job fields can be written.
  job_fn_ = fn;
  job_body_ = body;
  job_blocks_ = n_blocks;
  for (int i = 0; i < n_threads_; ++i) {
    ranges_[static_cast<size_t>(i)].bounds.store(
        pack(n_blocks * i / n_threads_, n_blocks * (i + 1) / n_threads_),
        std::memory_order_relaxed);
  }
  generation_.fetch_add(1);  // open (odd); seq_cst, read by workers before they join
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    wake_.notify_all();
  }
  work(0);
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

void ThreadPool::worker(int self) {
  using Clock = std::chrono::steady_clock;
  uint64_t seen = 0;
  Pending pending;
  for (;;) {
    // Wait for a newly opened job.
    uint64_t gen = generation_.load();
    if ((gen & 1) == 0 || gen == seen) {
      const auto deadline = Clock::now() + std::chrono::microseconds(kSpinMicros);
      for (int spins = 0;; ++spins) {
        if (stop_.load(std::memory_order_relaxed)) return;
        gen = generation_.load();
        if ((gen & 1) == 1 && gen != seen) break;
        take_hint(self, pending);
        if (pending.any) {
          std::atomic<uint64_t>& lines = hints_[static_cast<size_t>(self)].lines;
          lines.store(lines.load(std::memory_order_relaxed) + prefetch_some(pending),
                      std::memory_order_relaxed);
        } else {
          cpu_relax();
        }
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
    // A hint is for the job that follows it: drop what is left of it, and one not taken
    // yet (at worst, a hint for the next job posted while this worker was slow to join a
    // job that had closed already: it is lost, and nothing else).
    pending.any = false;
    hints_[static_cast<size_t>(self)].fresh.store(false, std::memory_order_relaxed);
    active_.fetch_add(1);
    if (generation_.load() == gen) work(self);
    if (active_.fetch_sub(1) == 1 && caller_waiting_.load()) {
      { std::lock_guard<std::mutex> lock(mutex_); }
      done_.notify_one();
    }
  }
}

}  // namespace spillway
