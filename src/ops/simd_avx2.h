// AVX2 helpers shared by the AVX2 kernel files and, for their 256-bit parts, the AVX-512
// ones (internal linkage in each): horizontal sums, and the AVX2 family's trait of f32
// vectors (Avx2F32) that the kernels written once for every family take (simd_exp.h,
// attention_piece.h, row_ops.h). Include only after the file's `#pragma GCC
// target("avx2,fma...")` (or clang's attribute push): the functions take that target.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "spillway/core/types.h"

// Fully unrolls tiny loops over rows, tokens or heads so that accumulator arrays live in
// registers.
#if defined(__clang__)
#define SPW_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SPW_UNROLL _Pragma("GCC unroll 16")
#else
#define SPW_UNROLL
#endif

// Inlines a kernel's building block into its loop whatever the compiler's size heuristics
// say: one left out of line passes its unpacked registers through memory (GCC 12 did so
// with the 5-bit unpacking once it became a template, and that kernel ran 1.4x slower).
#if defined(__GNUC__) || defined(__clang__)
#define SPW_INLINE inline __attribute__((always_inline))
#else
#define SPW_INLINE inline
#endif

namespace spillway::ops::detail {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The AVX2 family's vectors of f32: 8 lanes, 16 ymm registers, lane masks as vectors, and
// tails of rows done one element at a time (exp_tail).
struct Avx2F32 {
  using V = __m256;
  using Mask = __m256;  // all ones in the lanes that hold
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;
  static constexpr int kAlign = 32;
  static constexpr bool kMaskedTail = false;
  static SPW_INLINE V zero() { return _mm256_setzero_ps(); }
  static SPW_INLINE V set1(float x) { return _mm256_set1_ps(x); }
  static SPW_INLINE V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static SPW_INLINE V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static SPW_INLINE V load(const float* p) { return _mm256_load_ps(p); }
  static SPW_INLINE void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static SPW_INLINE void store(float* p, V v) { _mm256_store_ps(p, v); }
  static SPW_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static SPW_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static SPW_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static SPW_INLINE V div(V a, V b) { return _mm256_div_ps(a, b); }
  static SPW_INLINE V min(V a, V b) { return _mm256_min_ps(a, b); }
  static SPW_INLINE V max(V a, V b) { return _mm256_max_ps(a, b); }
  static SPW_INLINE V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }    // a b + c
  static SPW_INLINE V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a b
  static SPW_INLINE V neg(V a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
  static SPW_INLINE V round(V a) {  // to nearest, ties to even
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static SPW_INLINE V pow2i(V n) {  // 2^n for whole n in the exponent's range
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static SPW_INLINE Mask ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static SPW_INLINE Mask gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static SPW_INLINE V mul_where(Mask m, V a, V b) { return _mm256_and_ps(_mm256_mul_ps(a, b), m); }
  static SPW_INLINE V select(Mask m, V no, V yes) { return _mm256_blendv_ps(no, yes, m); }
  static SPW_INLINE float hsum(V v) { return detail::hsum(v); }
  static SPW_INLINE float hmax(V v) { return detail::hmax(v); }
  // Four vectors of partial dot products -> their four totals.
  static SPW_INLINE __m128 reduce4(const V* a) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
  // Elements [i, i + 8) of a cached row of type T (i a multiple of 8). A Q8_0 element is
  // its block's scale times its int8, exact in f32 as in the scalar kernel.
  template <DType T>
  static SPW_INLINE V load_kv(const uint8_t* row, int64_t i) {
    if constexpr (T == DType::F16) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
    } else if constexpr (T == DType::Q8_0) {
      const uint8_t* b = row + (i >> 5) * 34;
      uint16_t h;
      __builtin_memcpy(&h, b, 2);
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + (i & 31)));
      return _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h)),
                           _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
    } else {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
    }
  }
};

}  // namespace
}  // namespace spillway::ops::detail

#include "simd_exp.h"

namespace spillway::ops::detail {
namespace {

// e^v for one float with the vector formula (simd_exp.h), so that results do not depend
// on whether an element falls in a row's tail.
inline float exp_tail(float v) {
  alignas(32) float buf[8] = {v, v, v, v, v, v, v, v};
  _mm256_store_ps(buf, exp_v<Avx2F32>(_mm256_load_ps(buf)));
  return buf[0];
}

}  // namespace
}  // namespace spillway::ops::detail
