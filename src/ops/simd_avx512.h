// The AVX-512 family's trait of f32 vectors (Avx512F32), for the kernels written once for
// every family (simd_exp.h, attention_piece.h, row_ops.h); internal linkage in each file.
// Include only after the file's `#pragma GCC target("avx512f,...")` (or clang's attribute
// push): the functions take that target. Includes simd_avx2.h (the 8-lane helpers,
// SPW_UNROLL).
#pragma once

#include <immintrin.h>

#include <cmath>

#include "simd_avx2.h"

namespace spillway::ops::detail {
namespace {

// The AVX-512 family's vectors of f32: 16 lanes, 32 zmm registers, opmask lane masks, and
// tails of rows done with masked loads and stores.
struct Avx512F32 {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;
  static constexpr int kAlign = 64;
  static constexpr bool kMaskedTail = true;
  static SPW_INLINE V zero() { return _mm512_setzero_ps(); }
  static SPW_INLINE V set1(float x) { return _mm512_set1_ps(x); }
  static SPW_INLINE V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static SPW_INLINE V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static SPW_INLINE V load(const float* p) { return _mm512_load_ps(p); }
  static SPW_INLINE void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
  static SPW_INLINE void store(float* p, V v) { _mm512_store_ps(p, v); }
  static SPW_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static SPW_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static SPW_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static SPW_INLINE V div(V a, V b) { return _mm512_div_ps(a, b); }
  static SPW_INLINE V min(V a, V b) { return _mm512_min_ps(a, b); }
  static SPW_INLINE V max(V a, V b) { return _mm512_max_ps(a, b); }
  static SPW_INLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
  static SPW_INLINE V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  static SPW_INLINE V neg(V a) { return _mm512_xor_ps(a, _mm512_set1_ps(-0.0f)); }
  static SPW_INLINE V round(V a) {  // to nearest, ties to even
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static SPW_INLINE V pow2i(V n) {  // 2^n for whole n in the exponent's range
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  static SPW_INLINE Mask ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static SPW_INLINE Mask gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static SPW_INLINE V mul_where(Mask m, V a, V b) { return _mm512_maskz_mul_ps(m, a, b); }
  static SPW_INLINE V select(Mask m, V no, V yes) { return _mm512_mask_blend_ps(m, no, yes); }
  // Lanes [0, n) of 16, n <= 16; masked loads give 0 (or `fill`) in the other lanes.
  static SPW_INLINE Mask first(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static SPW_INLINE V loadu_masked(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static SPW_INLINE V loadu_masked(V fill, Mask m, const float* p) {
    return _mm512_mask_loadu_ps(fill, m, p);
  }
  static SPW_INLINE void storeu_masked(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  // Halves added: 16 lanes -> 8, as the AVX2 family's reductions then take them.
  static SPW_INLINE __m256 fold(V v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  }
  static SPW_INLINE float hsum(V v) { return detail::hsum(fold(v)); }
  static SPW_INLINE float hmax(V v) {
    return detail::hmax(_mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
  }
  // Four vectors of partial dot products -> their four totals (each folded to 8 lanes,
  // then reduced as the AVX2 family reduces).
  static SPW_INLINE __m128 reduce4(const V* a) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(fold(a[0]), fold(a[1])),
                                    _mm256_hadd_ps(fold(a[2]), fold(a[3])));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
  // Elements [i, i + 16) of a cached row of type T (i a multiple of 16). A Q8_0 element is
  // its block's scale times its int8, exact in f32 as in the scalar kernel.
  template <DType T>
  static SPW_INLINE V load_kv(const uint8_t* row, int64_t i) {
    if constexpr (T == DType::F16) {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i)));
    } else if constexpr (T == DType::Q8_0) {
      const uint8_t* b = row + (i >> 5) * 34;
      uint16_t h;
      __builtin_memcpy(&h, b, 2);
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + (i & 31)));
      return _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(h)),
                           _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
    } else {
      return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + i);
    }
  }
};

}  // namespace
}  // namespace spillway::ops::detail
