// The read bandwidth of this machine's memory, measured the way decoding reads its
// weights: a stream of loads through a buffer in transparent huge pages (as the model's
// interleaved weights are, core/huge_pages.h), each of a pool's threads summing a
// contiguous share with eight independent accumulators, so that loads, not adds, bound
// the loop. With the bytes a decoded token reads it gives decode's memory bound
// (session/memory_bound.h).
#pragma once

#include <cstdint>

#include "spillway/core/huge_pages.h"
#include "spillway/core/thread_pool.h"

namespace spillway {

class BandwidthProbe {
 public:
  // Bytes per second reading the first `bytes` of the probe's buffer with `pool`'s
  // threads: the median of `sweeps` timed sweeps after one untimed one. A buffer that fits
  // a large cache reads faster than DRAM, so ask for the working set's size. The buffer
  // grows to the largest size asked for and is written once (every page resident).
  double measure(ThreadPool& pool, uint64_t bytes, int sweeps);

  // One sweep over the first `bytes` (grown first as measure() grows it), untimed: for
  // callers that time sweeps themselves (Google Benchmark). Returns the sum it read.
  uint64_t sweep(ThreadPool& pool, uint64_t bytes);

  // Makes the buffer hold at least `bytes`, written once.
  void reserve(uint64_t bytes);

  // Sum of every sweep so far: keeps the loads observable.
  uint64_t checksum() const { return checksum_; }

 private:
  HugePageBuffer mem_;  // [words_] 64-bit words
  uint64_t words_ = 0;
  uint64_t checksum_ = 0;
};

}  // namespace spillway
