// AVX2 helpers shared by the AVX2 kernel files (internal linkage in each). Include only
// after the file's `#pragma GCC target("avx2,fma...")` (or clang's attribute push): the
// functions take that target.
#pragma once

#include <immintrin.h>

#include <cmath>

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

// e^x: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two for an exact product),
// e^r by a degree-7 polynomial (Taylor-like coefficients fitted for float), times 2^n
// built in the exponent bits. Inputs below -87.3 give 0, above 88.7 give +inf.
inline __m256 exp_ps(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
  const __m256 big = _mm256_cmp_ps(x, _mm256_set1_ps(88.7f), _CMP_GT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
  return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), big);
}

// Scalar tail with the same formula, so results do not depend on n % 8.
inline float exp_tail(float v) {
  alignas(32) float buf[8] = {v, v, v, v, v, v, v, v};
  _mm256_store_ps(buf, exp_ps(_mm256_load_ps(buf)));
  return buf[0];
}

}  // namespace
}  // namespace spillway::ops::detail
