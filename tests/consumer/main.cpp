// Uses an installed spillway through its public headers only: quantizes a row to Q4_1
// and Q8_0 and back, checking the reconstruction error against the bound each format
// guarantees, and sums a vector with ThreadPool::parallel_for. Prints "consumer ok" and
// returns 0 only when every check passes.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "spillway/core/quant.h"
#include "spillway/core/thread_pool.h"
#include "spillway/core/types.h"

namespace {

int g_failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "consumer: FAILED: %s\n", what);
    ++g_failures;
  }
}

// Round trip of one row through type t. Each block of `block` elements spans
// [lo, hi]; the scale step is (hi - lo) / levels for the affine types and
// max|x| / levels for the symmetric ones, so no element may move by more than half a
// step, plus a small allowance for the f16 rounding of the block's scale and offset.
void round_trip(spillway::DType t, const std::vector<float>& x, int levels, bool affine) {
  const spillway::DTypeInfo& info = spillway::dtype_info(t);
  const int64_t n = static_cast<int64_t>(x.size());
  const auto bytes = spillway::row_bytes(t, static_cast<uint64_t>(n));
  check(bytes.has_value(), "row_bytes of a whole number of blocks");
  if (!bytes) return;
  std::vector<uint8_t> q(*bytes);
  std::vector<float> y(x.size(), std::nanf(""));
  spillway::quantize_row_ref(t, x.data(), q.data(), n);
  spillway::dequantize_row(t, q.data(), y.data(), n);

  double worst_ratio = 0.0;
  double sq_err = 0.0, sq_ref = 0.0;
  for (int64_t b = 0; b < n; b += info.block_size) {
    const auto first = x.begin() + b, last = first + info.block_size;
    const float lo = *std::min_element(first, last), hi = *std::max_element(first, last);
    const float amax = std::max(std::fabs(lo), std::fabs(hi));
    const double step = affine ? (hi - lo) / levels : amax / levels;
    const double bound = 0.5 * step + 2e-3 * (std::fabs(lo) + amax) + 1e-6;
    for (int64_t i = b; i < b + info.block_size; ++i) {
      const double err = std::fabs(static_cast<double>(y[i]) - x[i]);
      worst_ratio = std::max(worst_ratio, err / bound);
      sq_err += err * err;
      sq_ref += static_cast<double>(x[i]) * x[i];
    }
  }
  const double nmse = sq_err / sq_ref;
  std::printf("%-5s %lld values -> %zu bytes, nmse %.2e, worst error %.2f of the bound\n",
              std::string(info.name).c_str(), static_cast<long long>(n), q.size(), nmse,
              worst_ratio);
  check(worst_ratio <= 1.0, "every element within half a quantization step");
  check(nmse < (levels < 100 ? 2e-2 : 2e-4), "normalized squared error small");
}

}  // namespace

int main() {
  try {
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.25f, 1.5f);
    std::vector<float> x(32 * 64);  // 64 blocks of 32
    for (float& v : x) v = normal(rng);

    round_trip(spillway::DType::Q4_1, x, 15, /*affine=*/true);
    round_trip(spillway::DType::Q8_0, x, 127, /*affine=*/false);

    // parallel_for covers [0, n) exactly once, in disjoint chunks.
    spillway::ThreadPool pool(4);
    const int64_t n = 100003;
    std::vector<std::atomic<int>> hits(n);
    std::atomic<int64_t> sum{0};
    pool.parallel_for(n, 64, [&](int64_t begin, int64_t end) {
      int64_t local = 0;
      for (int64_t i = begin; i < end; ++i) {
        hits[i].fetch_add(1, std::memory_order_relaxed);
        local += i;
      }
      sum.fetch_add(local, std::memory_order_relaxed);
    });
    const bool once = std::all_of(hits.begin(), hits.end(), [](const auto& h) { return h == 1; });
    std::printf("parallel_for on %d threads: sum %lld\n", pool.size(),
                static_cast<long long>(sum.load()));
    check(once, "parallel_for visits every index exactly once");
    check(sum.load() == n * (n - 1) / 2, "parallel_for sum");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: unexpected exception: %s\n", e.what());
    return 1;
  }
  if (g_failures != 0) {
    std::fprintf(stderr, "consumer: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("consumer ok\n");
  return 0;
}
