// AVX-512 row ops: swiglu, geglu and softmax with the 16-lane exp, rmsnorm. Tails of fewer
// than 16 elements run masked, with the same formula. Compiled for AVX-512 by target
// attributes and called only after a CPU check (kernels.cpp). swiglu and geglu compute
// each element exactly as the AVX2 versions' 8-lane loops do (same exp, same operations),
// so their results equal AVX2's bit for bit (but for AVX2 geglu's scalar tail of n % 8
// elements); softmax and rmsnorm sum in 16 lanes instead of 8.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

#if defined(__clang__)
#pragma clang attribute push(                                                               \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// GCC 12's AVX-512 intrinsics start from _mm*_undefined_*() (a self-initialised variable),
// which -Wmaybe-uninitialized and -Wuninitialized report once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "simd_avx512.h"

namespace spillway::ops::detail {

namespace {

// Lanes [0, n) of 16, n <= 16.
inline __mmask16 first(int64_t n) {
  return static_cast<__mmask16>((1u << n) - 1u);
}

inline __m512 swiglu16(__m512 g, __m512 u) {
  const __m512 e = exp16(_mm512_xor_ps(g, _mm512_set1_ps(-0.0f)));
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

inline __m512 geglu16(__m512 x, __m512 u) {
  const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  const __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-1.5957691216057308f),  // -2 sqrt(2/pi)
                                       _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x)));
  return _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

}  // namespace

void swiglu_avx512(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(gate + i, swiglu16(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  }
  if (i < n) {
    const __mmask16 m = first(n - i);
    _mm512_mask_storeu_ps(
        gate + i, m,
        swiglu16(_mm512_maskz_loadu_ps(m, gate + i), _mm512_maskz_loadu_ps(m, up + i)));
  }
}

void geglu_avx512(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(gate + i, geglu16(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  }
  if (i < n) {
    const __mmask16 m = first(n - i);
    _mm512_mask_storeu_ps(
        gate + i, m, geglu16(_mm512_maskz_loadu_ps(m, gate + i), _mm512_maskz_loadu_ps(m, up + i)));
  }
}

void softmax_avx512(float* x, int64_t n) {
  if (n <= 0) return;
  const int64_t n16 = n / 16 * 16;
  const __mmask16 tail = first(n - n16);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 vmax = ninf;
  for (int64_t i = 0; i < n16; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(ninf, tail, x + n16));
  const __m512 m = _mm512_set1_ps(hmax16(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n16; i += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
    _mm512_storeu_ps(x + i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  if (tail != 0) {
    // Masked-off lanes hold -inf: exp gives 0 and the sum is unchanged.
    const __m512 e = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, tail, x + n16), m));
    _mm512_mask_storeu_ps(x + n16, tail, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / hsum16(vsum));
  for (int64_t i = 0; i < n16; i += 16)
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
  if (tail != 0) {
    _mm512_mask_storeu_ps(x + n16, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + n16), inv));
  }
}

void rmsnorm_avx512(const float* x, const float* w, float* y, int64_t n, float eps) {
  const int64_t n16 = n / 16 * 16;
  const __mmask16 tail = first(n - n16);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n16; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const __m512 t = _mm512_maskz_loadu_ps(tail, x + n16);
  acc = _mm512_fmadd_ps(t, t, acc);
  const float scale = 1.0f / std::sqrt(hsum16(acc) / static_cast<float>(n) + eps);
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < n16; i += 16) {
    _mm512_storeu_ps(
        y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), s), _mm512_loadu_ps(w + i)));
  }
  if (tail != 0) {
    _mm512_mask_storeu_ps(y + n16, tail,
                          _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + n16), s),
                                        _mm512_maskz_loadu_ps(tail, w + n16)));
  }
}

}  // namespace spillway::ops::detail

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
