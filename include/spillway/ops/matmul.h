// Matrix products of quantized weights with f32 activations: the decode hot path (T = 1,
// matrix-vector) and prefill (T > 1, matrix-matrix in tiles). Weights stay in their
// GGUF blocks; activations are quantized once per call into 8-bit blocks where the
// weight type has an integer dot product.
//
// Integer kernels (weights x 8-bit activations): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 against
// blocks of 32 (int8 + f32 scale + scaled sum), Q4_K and Q6_K against Q8_K blocks of 256.
// Every other type (F32, F16, BF16, Q2_K, Q3_K, Q5_K, Q8_1) dequantizes each weight row
// to f32 and takes f32 dot products with the unquantized activations. Kernel families are
// chosen at run time from what the CPU supports; the scalar family computes exactly the
// same quantized math and is the reference the SIMD kernels are tested against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/core/types.h"

namespace spillway::ops {

// How the blocks of a weight matrix lie in memory.
enum class WeightLayout : uint8_t {
  // GGUF's: row r's blocks contiguous, at data + r * row_bytes.
  kRows,
  // Rows in groups of 8, each group's blocks interleaved: in the group of rows [8g, 8g + 8)
  // (every full group), the blocks b of the 8 rows lie together at data + 8g * row_bytes +
  // 8b * block bytes, so that a matrix-vector product reads the group front to back; the
  // rows after the last full group are as in kRows. Same size as kRows. Only for the types
  // can_interleave() accepts. Q8_0 keeps each block whole (row 8g + i's at i block
  // bytes); Q4_0, Q4_1, Q5_0 and Q5_1 store the 8 blocks as the kernels consume them: the
  // 8 rows' f16 d, for Q4_1 / Q5_1 then their 8 f16 m, for Q5_0 / Q5_1 then their 8
  // 32-bit qh words, then the nibble bytes in 4 pieces of 32 bytes, piece k holding bytes
  // 4k..4k+3 of rows 0..7's 16 (4 bytes of a row per 32-bit lane, so that integer dot
  // products need no horizontal adds).
  kRows8,
};

// A matrix of quantized weights: `rows` rows of `cols` elements of `type`, each row
// `row_bytes` long (GGUF shape [ne0 = cols, ne1 = rows]), laid out as `layout` says. Not
// owned. No alignment needed.
struct WeightMatrix {
  DType type = DType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  uint64_t row_bytes = 0;
  WeightLayout layout = WeightLayout::kRows;
};

// Whether matrices of type t can take WeightLayout::kRows8: the types of 32-element blocks
// with an integer kernel (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
bool can_interleave(DType t);

// w (in kRows) rewritten in kRows8 into dst (row_bytes * rows bytes, not overlapping w):
// the returned matrix points at dst. Products with it equal those with w bit for bit; what
// changes is only the order in which a product reads the bytes. InvalidArgument if w is not
// a valid kRows matrix of a type can_interleave() accepts.
WeightMatrix interleave_rows8(const WeightMatrix& w, void* dst);

// Row r of w (either layout) as cols f32 values.
void dequantize_weight_row(const WeightMatrix& w, int64_t r, float* y);

// T rows of `cols` f32 activations plus their quantized forms, made on demand by the
// first product that needs each form and reused by the following ones (Q, K and V share
// one). Buffers grow to the largest size seen and are then reused: no allocation per
// token after warm-up.
class Activations {
 public:
  // Points at x ([T][cols], row stride cols); x must stay unchanged while in use.
  void set(const float* x, int64_t T, int64_t cols);
  const float* f32() const { return x_; }
  int64_t n_rows() const { return T_; }
  int64_t cols() const { return cols_; }

  // Quantized forms, computed on first use after set(). Layouts are private to ops.
  // Both need cols to be a multiple of their block size (32, 256); they throw
  // InvalidArgument otherwise.
  const void* q8_0(ThreadPool& pool);  // blocks of 32: Q8_0-style, per-row contiguous
  const void* q8_k(ThreadPool& pool);  // blocks of 256: Q8_K, per-row contiguous

 private:
  const float* x_ = nullptr;
  int64_t T_ = 0, cols_ = 0;
  bool have_q8_0_ = false, have_q8_k_ = false;
  std::vector<std::byte> q8_0_, q8_k_;
};

// y[t * ldy + r] = sum_c W[r][c] * x[t][c] for t < x.n_rows(), r < w.rows.
// Requires x.cols() == w.cols (InvalidArgument otherwise) and ldy >= w.rows when T > 1.
// Work is split over the pool's threads. A token's outputs do not depend on T, on the
// other tokens or on the thread count: in a batch it gets the bits it gets alone (prefill
// and chunked evaluation equal decoding token by token). Throws UnsupportedError for a weight type
// without a dequantizer.
void matmul(const WeightMatrix& w, Activations& x, float* y, int64_t ldy, ThreadPool& pool);

// One product of matmul_many: y[t * ldy + r] = W[r] . x[t].
struct MatmulOut {
  const WeightMatrix* w = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
};

// Several products of the same activations (an attention layer's Q, K and V) with the
// results of separate matmul calls, bit for bit. For a single token they run as one job
// over the threads (one split, one wait) instead of one job each.
void matmul_many(const MatmulOut* outs, int n, Activations& x, ThreadPool& pool);

// The first half of a gated FFN: gate = SiLU(W_gate x) * (W_up x), over `gate` (up holds
// W_up x afterwards); both [T][ld]. Equal to two matmul calls and ops::swiglu, bit for
// bit; for a single token one job, each thread applying SiLU to the rows it computed.
void matmul_swiglu(const WeightMatrix& w_gate, const WeightMatrix& w_up, Activations& x,
                   float* gate, float* up, int64_t ld, ThreadPool& pool);

// The matrices a single-token product will read next, handed to the pool's idle workers
// to prefetch while the caller works alone (ThreadPool::prefetch_hint): each worker gets
// the rows that matmul_many(ws[0..n)) (or, interleaved, matmul_swiglu(ws[0], ws[1])) will
// give it first, up to `bytes` each. Changes no result; does nothing for matrices that
// would not run as one job of integer kernels, or on a pool of one thread.
void prefetch_single_token(const WeightMatrix* const* ws, int n, bool interleaved, size_t bytes,
                           ThreadPool& pool);

// Convenience for a single f32 vector (tests, tools): y[r] = W[r] . x.
void matvec(const WeightMatrix& w, const float* x, float* y, ThreadPool& pool);

// Which kernel family this build and CPU use: "avx512-vnni", "avx2" or "scalar". Chosen
// once, at first use, from the CPU's features (CPUID, and XGETBV for the OS's support of
// YMM / ZMM state) and the SPILLWAY_ISA environment variable ("scalar", "avx2", "avx512"
// or "avx512-vnni"; a family the CPU cannot run is ignored and the best one used). The
// same family serves matmul, attention and the row ops.
const char* kernel_isa();

// Kernel families, for tests and benchmarks that compare them. kAvx512Vnni: AVX-512
// F/BW/VL/DQ with VNNI (vpdpbusd); where its own kernel is not faster than AVX2's, it runs
// the AVX2 kernel.
enum class KernelIsa { kScalar, kAvx2, kAvx512Vnni };
const char* isa_name(KernelIsa isa);
// The families this CPU can run, the scalar reference first, narrowest to widest.
std::vector<KernelIsa> available_isas();
// matmul with a forced family; UnsupportedError if the CPU cannot run it.
void matmul_with(KernelIsa isa, const WeightMatrix& w, Activations& x, float* y, int64_t ldy,
                 ThreadPool& pool);
// Whether `t` has an integer (8-bit activation) kernel; false means the f32 fallback.
bool has_integer_kernel(DType t);

}  // namespace spillway::ops
