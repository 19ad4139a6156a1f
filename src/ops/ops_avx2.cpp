// AVX2 row ops: row_ops.h's swiglu, geglu, softmax and rmsnorm with 8-lane vectors
// (Avx2F32; tails one element at a time). Compiled for AVX2 by target attributes and
// called only after a CPU check (see ops.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

#include "target_avx2_begin.h"

#include "row_ops.h"
#include "simd_avx2.h"

namespace spillway::ops::detail {

void swiglu_avx2(float* gate, const float* up, int64_t n) {
  swiglu_rows<Avx2F32>(gate, up, n);
}

void geglu_avx2(float* gate, const float* up, int64_t n) {
  geglu_rows<Avx2F32>(gate, up, n);
}

void softmax_avx2(float* x, int64_t n) {
  softmax_rows<Avx2F32>(x, n);
}

void rmsnorm_avx2(const float* x, const float* w, float* y, int64_t n, float eps) {
  rmsnorm_rows<Avx2F32>(x, w, y, n, eps);
}

}  // namespace spillway::ops::detail

#include "target_end.h"
