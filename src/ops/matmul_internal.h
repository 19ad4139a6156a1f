// Private to ops/: the activation block layouts and the matmul part of a kernel table
// (kernels.h). Each kernel family (scalar, AVX2, AVX-512 VNNI) fills one MatmulKernels.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "spillway/core/quant.h"
#include "spillway/core/thread_pool.h"
#include "spillway/ops/matmul.h"

namespace spillway::ops::detail {

// The rows of a single-token product of ws[0..n) (matmul_many's one job; interleaved:
// matmul_swiglu's, gate and up rows together) that thread `thread` of `nth` takes first: its
// range of the job's 16-row blocks, [B * thread / nth, B * (thread + 1) / nth), as byte
// ranges into `out` (at most ThreadPool::kHintRanges), `bytes` in all at most (split evenly
// between the two matrices when interleaved). Returns how many; 0 where the product would
// not run as one job of integer kernels.
int single_token_share(const WeightMatrix* const* ws, int n, bool interleaved, size_t bytes,
                       int thread, int nth, ThreadPool::HintRange* out);

// Q8_0-style activation row of nb blocks of 32, struct-of-arrays so that kernels can
// broadcast scales and sum min terms with contiguous loads:
//   int8  qs[nb][32]   quantized values, |q| <= 127
//   float d[nb]        scale: x ~= d * q
//   float s[nb]        d * sum(q[b]) (the min / offset term of Q4_0, Q4_1)
inline constexpr int64_t kQ8ABlockBytes = 32 + 4 + 4;
inline int64_t q8a_row_bytes(int64_t cols) {
  return cols / kQK * kQ8ABlockBytes;
}
struct Q8ARow {
  const int8_t* qs;
  const float* d;
  const float* s;
};
inline Q8ARow q8a_row(const void* base, int64_t cols, int64_t t) {
  const int64_t nb = cols / kQK;
  const auto* p = static_cast<const std::byte*>(base) + t * q8a_row_bytes(cols);
  return {reinterpret_cast<const int8_t*>(p), reinterpret_cast<const float*>(p + nb * 32),
          reinterpret_cast<const float*>(p + nb * 36)};
}

// Q8_K activation rows: cols / 256 BlockQ8_K per row (d = amax / 127, |q| <= 127).
inline int64_t q8k_row_bytes(int64_t cols) {
  return cols / kQKK * static_cast<int64_t>(sizeof(BlockQ8_K));
}

// Full groups of 8 interleaved rows (WeightLayout::kRows8): group g's block b, the 8
// rows' blocks b together (8 block bytes), starts at data + 8g * row_bytes + 8b * block
// bytes. Q8_0 keeps each block whole there, row i's at i block bytes. The 4- and 5-bit
// types store the 8 blocks as the kernels consume them (packs_nibbles): each f16 field
// (d; then m for Q4_1 and Q5_1) as 8 rows' values together (16 bytes), then for Q5_0 /
// Q5_1 the 8 rows' 32-bit qh words (32 bytes), then 4 pieces of 32 bytes, piece k holding
// bytes 4k..4k+3 of each row's 16 nibble bytes (rows 0..7), so that one 32-bit lane holds
// 4 bytes (or the high bits) of one row and a register 8 rows.
inline bool packs_nibbles(DType t) {
  return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1;
}
// Bytes of the f16 fields of one block of a packed type (2: d; 4: d and m), which lie
// first in a GGUF block and, 8 rows at a time, in a packed group.
inline constexpr int packed_fields(DType t) {
  return t == DType::Q4_1 || t == DType::Q5_1 ? 4 : 2;
}
// Bytes of the high-bit word qh of one block (4 for the 5-bit types, after the fields in
// GGUF's block and after the 8 rows' fields in a packed group).
inline constexpr int packed_qh(DType t) {
  return t == DType::Q5_0 || t == DType::Q5_1 ? 4 : 0;
}
inline constexpr int64_t kMaxLegacyBlock = 34;  // the largest 32-element block (Q8_0)

inline bool interleaved_row(const WeightMatrix& w, int64_t r) {
  return w.layout == WeightLayout::kRows8 && r < w.rows / 8 * 8;
}

// Block b of row r of w, in either layout, as GGUF lays it out: a pointer into w, or, for
// a row of a packed group, `tmp` (kMaxLegacyBlock bytes) holding the block put together.
inline const uint8_t* legacy_block(const WeightMatrix& w, int64_t r, int64_t b, uint8_t* tmp) {
  const auto* base = static_cast<const uint8_t*>(w.data);
  const auto bb = static_cast<uint64_t>(dtype_info(w.type).type_size);
  if (!interleaved_row(w, r)) return base + static_cast<uint64_t>(r) * w.row_bytes + b * bb;
  const uint8_t* group = base + static_cast<uint64_t>(r & ~int64_t{7}) * w.row_bytes +
                         static_cast<uint64_t>(b) * 8 * bb;
  const auto i = static_cast<uint64_t>(r & 7);
  if (!packs_nibbles(w.type)) return group + i * bb;
  const int fields = packed_fields(w.type), qh = packed_qh(w.type);
  for (int f = 0; f < fields / 2; ++f) std::memcpy(tmp + 2 * f, group + 16 * f + 2 * i, 2);
  if (qh != 0) std::memcpy(tmp + fields, group + 8 * fields + 4 * i, 4);
  for (int k = 0; k < 4; ++k) {
    std::memcpy(tmp + fields + qh + 4 * k, group + 8 * (fields + qh) + 32 * k + 4 * i, 4);
  }
  return tmp;
}

// Computes y[t * ldy + r] for r in [r0, r1), t in [t0, t1). `xq` is the activation form
// the kernel's weight type needs (Q8A rows for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, Q8_K rows for
// Q4_K/Q6_K). r0 is a multiple of 8 (the SIMD kernels run whole groups of 8 rows, which
// in WeightLayout::kRows8 start at multiples of 8); matmul.cpp splits rows in multiples
// of 16.
using TileFn = void (*)(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
                        int64_t t1, float* y, int64_t ldy);
// f32 dot product of n elements.
using DotF32Fn = float (*)(const float* a, const float* b, int64_t n);
// One row of `cols` f32 activations (a multiple of 32) into Q8A blocks at `out`
// (q8a_row_bytes(cols) bytes): per block d = amax / 127 (amax over the non-NaN |x|),
// q = x * (127 / amax) clamped to [-127, 127] and rounded to nearest, ties to even (NaN
// gives 0; amax 0 gives all 0), s = d * sum(q). Every family writes the same bytes.
using QuantizeFn = void (*)(const float* x, int64_t cols, std::byte* out);

struct MatmulKernels {
  TileFn q4_0 = nullptr;
  TileFn q4_1 = nullptr;
  TileFn q5_0 = nullptr;
  TileFn q5_1 = nullptr;
  TileFn q8_0 = nullptr;
  TileFn q4_k = nullptr;
  TileFn q6_k = nullptr;
  DotF32Fn dot_f32 = nullptr;
  QuantizeFn quantize_q8a = nullptr;
  QuantizeFn quantize_q8k = nullptr;
};

// The scalar QuantizeFn (matmul.cpp): the reference.
void quantize_q8a_scalar(const float* x, int64_t cols, std::byte* out);
// One row of `cols` f32 activations (a multiple of 256) into BlockQ8_K blocks at `out`,
// the activations of the K-quant products: per block d = amax / 127, q as for Q8A (same
// rounding, NaN and clamping rules), bsums[g] = the sum of q over values 16g..16g+15.
// Every family writes the same bytes; this is the reference.
void quantize_q8k_scalar(const float* x, int64_t cols, std::byte* out);

const MatmulKernels& scalar_matmul_kernels();
// Only valid when the CPU supports AVX2, FMA and F16C.
const MatmulKernels& avx2_matmul_kernels();
// Only valid when the CPU supports AVX-512 F/BW/VL/DQ and VNNI. Entries without an
// AVX-512 kernel (dot_f32, quantize_q8a, quantize_q8k) are null: kernels.cpp keeps AVX2's
// there.
const MatmulKernels& avx512_matmul_kernels();

}  // namespace spillway::ops::detail
