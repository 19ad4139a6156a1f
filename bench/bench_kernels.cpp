// Kernel benchmarks, per kernel family (scalar, avx2, avx512-vnni: those the CPU runs):
// quantized matvec / matmul at the models' shapes (rows x cols), in the layout a loaded
// model gives each type (interleaved rows for the 32-element types), for T = 1 (decode:
// reported as weight GB/s) and T = 64, 512 (prefill: GFLOP/s), for 1 and 2 threads; T = 1
// again with the weights coming from memory instead of the cache (matvec_cold: what decode
// sees); attention of one layer and the row ops (rmsnorm, softmax, swiglu, geglu) at the
// models' sizes; plus a single-thread streaming read of a 512 MB buffer (the memory
// bandwidth bound of decode).
//   SmolLM2-135M: Q4_1 projections 576x576, 1536x576 and 576x1536, the Q8_0 tied output
//   matrix 49152x576.
//   Gemma 3 270M: Q5_0 attn_q / ffn_gate / ffn_up 1024x640 and 2048x640 (Q5_1 at the same
//   shape for comparison), Q4_K attn_output 640x1024 and ffn_down 640x2048, Q6_K ffn_down
//   640x2048, the Q8_0 tied output matrix 262144x640 (178 MB; T = 1 and 64: decode, and
//   chunked evaluation where one pass over the matrix serves many tokens).
//
//   bench_kernels --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   bench_kernels --benchmark_filter='/(Q4_K|Q6_K)/.*/T1/'     # one family of rows
//   bench_kernels --benchmark_filter='^(attention|rowop)/'     # attention and row ops
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ops/kernels.h"
#include "spillway/core/quant.h"
#include "spillway/core/thread_pool.h"
#include "spillway/core/types.h"
#include "spillway/ops/attention.h"
#include "spillway/ops/matmul.h"

namespace {

using spillway::DType;
using spillway::ops::KernelIsa;

// Byte offsets of a block's f16 scale {d, second field (m, dmin) or -1}.
struct ScaleFields {
  int d, m;
};
ScaleFields scale_fields(DType t) {
  switch (t) {
    case DType::Q4_1:
    case DType::Q5_1:
    case DType::Q4_K:
      return {0, 2};
    case DType::Q6_K:
      return {208, -1};
    default:
      return {0, -1};
  }
}

// Random blocks with realistic f16 scales (random bits could be NaN or subnormal).
std::vector<uint8_t> random_weights(DType t, int64_t rows, int64_t cols) {
  const uint64_t rb = *spillway::row_bytes(t, static_cast<uint64_t>(cols));
  std::vector<uint8_t> w(rb * static_cast<uint64_t>(rows));  // [rows][rb]
  std::mt19937 rng(42);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const auto& info = spillway::dtype_info(t);
  const ScaleFields f = scale_fields(t);
  const uint16_t d = spillway::f32_to_f16(0.01f), m = spillway::f32_to_f16(-0.08f);
  for (uint64_t off = 0; off < w.size(); off += static_cast<uint64_t>(info.type_size)) {
    std::memcpy(&w[off + static_cast<uint64_t>(f.d)], &d, 2);
    if (f.m >= 0) std::memcpy(&w[off + static_cast<uint64_t>(f.m)], &m, 2);
  }
  return w;
}

// A matrix of random_weights at `data` in the layout a loaded model gives type t
// (interleaved rows where the type takes them: docs/architecture.md, "Kernels"): w's bytes
// rewritten into data (w.size() bytes).
spillway::ops::WeightMatrix as_loaded(DType t, const std::vector<uint8_t>& w, int64_t rows,
                                      int64_t cols, uint8_t* data) {
  const spillway::ops::WeightMatrix rows_major{
      t, w.data(), rows, cols, *spillway::row_bytes(t, static_cast<uint64_t>(cols))};
  if (spillway::ops::can_interleave(t)) return spillway::ops::interleave_rows8(rows_major, data);
  std::memcpy(data, w.data(), w.size());
  spillway::ops::WeightMatrix m = rows_major;
  m.data = data;
  return m;
}

void bench_matmul(benchmark::State& state, KernelIsa isa, DType t, int64_t rows, int64_t cols,
                  int64_t T, int threads) {
  const auto random = random_weights(t, rows, cols);
  std::vector<uint8_t> w(random.size());
  const spillway::ops::WeightMatrix wm = as_loaded(t, random, rows, cols, w.data());
  std::vector<float> x(static_cast<size_t>(T * cols)), y(static_cast<size_t>(T * rows));
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  spillway::ThreadPool pool(threads);
  spillway::ops::Activations acts;
  for (auto _ : state) {
    acts.set(x.data(), T, cols);  // quantization of the activations is part of the cost
    spillway::ops::matmul_with(isa, wm, acts, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double iters = static_cast<double>(state.iterations());
  if (T == 1) {
    state.counters["GB/s"] = benchmark::Counter(static_cast<double>(w.size()) * iters / 1e9,
                                                benchmark::Counter::kIsRate);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(rows * cols * T) * iters / 1e9, benchmark::Counter::kIsRate);
}

// Decode as the model sees it: T = 1 over copies of the matrix that together exceed the
// last-level cache (>= 128 MB), one copy per iteration, so that the weights come from
// memory as they do when a token walks through all the layers.
void bench_matvec_cold(benchmark::State& state, KernelIsa isa, DType t, int64_t rows, int64_t cols,
                       int threads) {
  const auto w = random_weights(t, rows, cols);
  const size_t n_copy = static_cast<size_t>((128ull << 20) / w.size() + 1);
  std::vector<uint8_t> copies(w.size() * n_copy);  // [n_copy][rows][row_bytes]
  const spillway::ops::WeightMatrix first = as_loaded(t, w, rows, cols, copies.data());
  for (size_t i = 1; i < n_copy; ++i) std::memcpy(&copies[i * w.size()], copies.data(), w.size());
  std::vector<float> x(static_cast<size_t>(cols)), y(static_cast<size_t>(rows));
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  spillway::ThreadPool pool(threads);
  spillway::ops::Activations acts;
  size_t i = 0;
  for (auto _ : state) {
    spillway::ops::WeightMatrix wm = first;
    wm.data = &copies[i * w.size()];
    acts.set(x.data(), 1, cols);
    spillway::ops::matmul_with(isa, wm, acts, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    i = i + 1 == n_copy ? 0 : i + 1;
  }
  state.counters["GB/s"] = benchmark::Counter(
      static_cast<double>(w.size()) * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}

// Decode attention of one layer (n_head query heads, n_kv KV heads of head_dim) over `span`
// cached keys with one family's piece kernel, piece by piece and merged, on one thread;
// the cache of one layer stays in L2/L3 here, so this is the compute side (KV GB/s from
// cache).
void bench_attention(benchmark::State& state, KernelIsa isa, spillway::DType kv_type, int64_t nh,
                     int64_t nkv, int64_t hd, int64_t span) {
  namespace ops = spillway::ops;
  const ops::detail::Kernels& ks = ops::detail::kernels_for(isa);
  const size_t n = static_cast<size_t>(nkv * span * hd);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> kf(n), vf(n), q(static_cast<size_t>(nh * hd)), out(q.size());
  for (auto& x : kf) x = nd(rng);
  for (auto& x : vf) x = nd(rng);
  for (auto& x : q) x = nd(rng);
  // The cache as kv_type (f32, f16 or q8_0 rows).
  const uint64_t cache_bytes = *spillway::row_bytes(kv_type, n);
  std::vector<uint8_t> kc(cache_bytes), vc(cache_bytes);
  spillway::quantize_row_ref(kv_type, kf.data(), kc.data(), static_cast<int64_t>(n));
  spillway::quantize_row_ref(kv_type, vf.data(), vc.data(), static_cast<int64_t>(n));
  const void* k = kc.data();
  const void* v = vc.data();
  const ops::AttentionShape s{nh, nkv, hd, span * hd, kv_type, 1.0f / std::sqrt(float(hd))};
  // Two runs, as a sink policy has.
  const ops::KeyRun runs[2] = {{0, 4, q.data()}, {4, static_cast<int32_t>(span), q.data()}};
  const int64_t n_pieces = ops::attention_pieces(span);
  const int64_t pf = ops::attention_part_floats(s);
  std::vector<float> scratch(static_cast<size_t>(n_pieces * pf));
  for (auto _ : state) {
    for (int64_t g = 0; g < nkv; ++g) {
      for (int64_t p = 0; p < n_pieces; ++p) {
        ops::detail::attend_piece_with(ks, s, g, runs, 2, p * ops::kAttnPiece,
                                       std::min(span, (p + 1) * ops::kAttnPiece), k, v,
                                       scratch.data() + p * pf);
      }
      ops::attend_merge(s, g, scratch.data(), n_pieces, out.data());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["KV GB/s"] = benchmark::Counter(
      2.0 * static_cast<double>(cache_bytes) * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}

// One family's row op over n elements (values as in a model: normal, gates spread wider).
// The in-place ops start from the same values each iteration: the copy of n floats back
// into place is timed with them (the same for every family).
void bench_rowop(benchmark::State& state, KernelIsa isa, const std::string& op, int64_t n) {
  const spillway::ops::detail::Kernels& ks = spillway::ops::detail::kernels_for(isa);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  // Rows on 64-byte boundaries, as a model's activation buffers are: where the heap puts a
  // vector would otherwise decide how many loads cross a cache line (12-15 % of an rmsnorm
  // of 576 between two builds that differed only in what was allocated before).
  const size_t pad = static_cast<size_t>((n + 15) / 16 * 16);
  std::vector<float> mem(3 * pad + 16);
  float* base = mem.data() + (16 - (reinterpret_cast<uintptr_t>(mem.data()) / 4) % 16) % 16;
  const std::span<float> x0(base, static_cast<size_t>(n)), w(base + pad, x0.size()),
      x(base + 2 * pad, x0.size());
  for (auto& v : x0) v = nd(rng);
  for (auto& v : w) v = nd(rng);
  const size_t bytes = x0.size() * sizeof(float);
  for (auto _ : state) {
    if (op == "rmsnorm") {
      ks.rmsnorm(x0.data(), w.data(), x.data(), n, 1e-6f);
    } else {
      std::memcpy(x.data(), x0.data(), bytes);
      if (op == "softmax") {
        ks.softmax(x.data(), n);
      } else if (op == "swiglu") {
        ks.swiglu(x.data(), w.data(), n);
      } else {
        ks.geglu(x.data(), w.data(), n);
      }
    }
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
}

void bench_stream_read(benchmark::State& state) {
  const size_t n = (512ull << 20) / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  for (auto _ : state) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < n; i += 4) {
      s0 += buf[i];
      s1 += buf[i + 1];
      s2 += buf[i + 2];
      s3 += buf[i + 3];
    }
    benchmark::DoNotOptimize(s0 + s1 + s2 + s3);
  }
  state.counters["GB/s"] = benchmark::Counter(
      static_cast<double>(n * sizeof(uint64_t)) * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}

}  // namespace

int main(int argc, char** argv) {
  struct Shape {
    DType type;
    int64_t rows, cols;
  };
  const Shape shapes[] = {
      // SmolLM2-135M
      {DType::Q4_1, 576, 576},
      {DType::Q4_1, 1536, 576},
      {DType::Q4_0, 1536, 576},  // for comparison (Q4_1 without the min)
      {DType::Q4_1, 576, 1536},
      {DType::Q8_0, 49152, 576},
      // Gemma 3 270M
      {DType::Q5_0, 1024, 640},
      {DType::Q5_0, 2048, 640},
      {DType::Q5_1, 2048, 640},
      {DType::Q4_K, 640, 1024},
      {DType::Q4_K, 640, 2048},
      {DType::Q6_K, 640, 2048},
      {DType::Q8_0, 262144, 640},
  };
  for (KernelIsa isa : spillway::ops::available_isas()) {
    for (const Shape& s : shapes) {
      for (int64_t T : {1, 64, 512}) {
        if (s.rows > 100000 && T > 64) continue;  // the Gemma output matrix
        for (int threads : {1, 2}) {
          const std::string name =
              fmt::format("matmul/{}/{}/{}x{}/T{}/threads:{}", spillway::ops::isa_name(isa),
                          spillway::dtype_name(s.type), s.rows, s.cols, T, threads);
          auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
            bench_matmul(st, isa, s.type, s.rows, s.cols, T, threads);
          });
          b->Unit(benchmark::kMicrosecond)->UseRealTime();
          if ((T == 512 && s.rows == 49152) || (T == 64 && s.rows > 100000)) b->Iterations(2);
        }
      }
    }
  }
  for (KernelIsa isa : spillway::ops::available_isas()) {
    for (const Shape& s : shapes) {
      for (int threads : {1, 2}) {
        const std::string name =
            fmt::format("matvec_cold/{}/{}/{}x{}/T1/threads:{}", spillway::ops::isa_name(isa),
                        spillway::dtype_name(s.type), s.rows, s.cols, threads);
        benchmark::RegisterBenchmark(name.c_str(),
                                     [=](benchmark::State& st) {
                                       bench_matvec_cold(st, isa, s.type, s.rows, s.cols, threads);
                                     })
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
    }
  }
  struct AttnShape {
    const char* model;
    int64_t nh, nkv, hd;
  };
  for (KernelIsa isa : spillway::ops::available_isas()) {
    for (const AttnShape& a : {AttnShape{"smollm2", 9, 3, 64}, AttnShape{"gemma3", 4, 1, 256}}) {
      for (spillway::DType kv :
           {spillway::DType::F32, spillway::DType::F16, spillway::DType::Q8_0}) {
        for (int64_t span : {128, 1024, 4096}) {
          const std::string name =
              fmt::format("attention/{}/{}/{}/{}x{}x{}/span{}", spillway::ops::isa_name(isa),
                          a.model, spillway::dtype_name(kv), a.nh, a.nkv, a.hd, span);
          benchmark::RegisterBenchmark(
              name.c_str(),
              [=](benchmark::State& st) { bench_attention(st, isa, kv, a.nh, a.nkv, a.hd, span); })
              ->Unit(benchmark::kMicrosecond)
              ->UseRealTime();
        }
      }
    }
  }
  struct RowOp {
    const char* op;
    int64_t n;
  };
  // rmsnorm over a hidden state (576, 640), softmax over a vocabulary (49152), the gated
  // FFN activations (1536 SmolLM2, 2048 Gemma).
  const RowOp row_ops[] = {
      {"rmsnorm", 576}, {"rmsnorm", 640}, {"softmax", 49152}, {"swiglu", 1536}, {"geglu", 2048}};
  for (KernelIsa isa : spillway::ops::available_isas()) {
    for (const RowOp& r : row_ops) {
      const std::string name =
          fmt::format("rowop/{}/{}/n{}", spillway::ops::isa_name(isa), r.op, r.n);
      const std::string op = r.op;
      benchmark::RegisterBenchmark(name.c_str(),
                                   [=](benchmark::State& st) { bench_rowop(st, isa, op, r.n); })
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  }
  benchmark::RegisterBenchmark("stream_read/512MB/threads:1", bench_stream_read)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
