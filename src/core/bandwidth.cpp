#include "spillway/core/bandwidth.h"

#include <chrono>
#include <vector>

#include "spillway/core/stats.h"

namespace spillway {

void BandwidthProbe::reserve(uint64_t bytes) {
  const uint64_t words = (bytes + 7) / 8;
  if (words <= words_) return;
  mem_ = HugePageBuffer(static_cast<size_t>(words * 8));
  words_ = words;
  auto* w = reinterpret_cast<uint64_t*>(mem_.data());
  for (uint64_t i = 0; i < words_; ++i) w[i] = i;
}

uint64_t BandwidthProbe::sweep(ThreadPool& pool, uint64_t bytes) {
  reserve(bytes);
  const auto* buf = reinterpret_cast<const uint64_t*>(mem_.data());
  const auto n = static_cast<int64_t>((bytes + 7) / 8);
  std::vector<uint64_t> partial(static_cast<size_t>(pool.size()) * 8);  // a line apart
  pool.run([&](int ith, int nth) {
    const int64_t b = n * ith / nth, e = n * (ith + 1) / nth;
    uint64_t a[8] = {};
    int64_t i = b;
    for (; i + 8 <= e; i += 8)
      for (int k = 0; k < 8; ++k) a[k] += buf[i + k];
    for (; i < e; ++i) a[0] += buf[i];
    uint64_t sum = 0;
    for (uint64_t x : a) sum += x;
    partial[static_cast<size_t>(ith) * 8] = sum;
  });
  uint64_t total = 0;
  for (size_t i = 0; i < partial.size(); i += 8) total += partial[i];
  checksum_ += total;
  return total;
}

double BandwidthProbe::measure(ThreadPool& pool, uint64_t bytes, int sweeps) {
  reserve(bytes);
  const uint64_t read = (bytes + 7) / 8 * 8;
  std::vector<double> rates;
  for (int sw = 0; sw <= sweeps; ++sw) {
    const auto t0 = std::chrono::steady_clock::now();
    sweep(pool, bytes);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sw > 0) rates.push_back(static_cast<double>(read) / t);
  }
  return stats::median(rates);
}

}  // namespace spillway
