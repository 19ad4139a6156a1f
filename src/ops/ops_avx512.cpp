// AVX-512 row ops: row_ops.h's swiglu, geglu, softmax and rmsnorm with 16-lane vectors
// (Avx512F32). Tails of fewer than 16 elements run masked, with the same formula. Compiled for
// AVX-512 by target attributes and called only after a CPU check (kernels.cpp). swiglu and geglu
// compute each element exactly as the AVX2 versions' 8-lane loops do (same exp, same operations),
// so their results equal AVX2's bit for bit (but for AVX2 geglu's scalar tail of n % 8
// elements); softmax and rmsnorm sum in 16 lanes instead of 8.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

#include "target_avx512_begin.h"

#include "row_ops.h"
#include "simd_avx512.h"

namespace spillway::ops::detail {

void swiglu_avx512(float* gate, const float* up, int64_t n) {
  swiglu_rows<Avx512F32>(gate, up, n);
}

void geglu_avx512(float* gate, const float* up, int64_t n) {
  geglu_rows<Avx512F32>(gate, up, n);
}

void softmax_avx512(float* x, int64_t n) {
  softmax_rows<Avx512F32>(x, n);
}

void rmsnorm_avx512(const float* x, const float* w, float* y, int64_t n, float eps) {
  rmsnorm_rows<Avx512F32>(x, w, y, n, eps);
}

}  // namespace spillway::ops::detail

#include "target_end.h"
