// The row ops (the contracts of ops.h: SwiGLU, GeGLU, softmax, RMS norm), written once for
// the SIMD families: templated on the family's vector trait V (Avx2F32, Avx512F32) and
// instantiated by each family's file under its target pragma. A row's tail (its last
// n % lanes elements) follows the family: masked loads and stores where V has them
// (V::kMaskedTail), else one element at a time with the same formula (exp_tail), so that
// each family keeps the summation order it was measured and tested with.
//
// Internal linkage: include only after the family file's target pragma, after its simd
// header. No standard-library templates (see matmul_avx2.cpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "simd_avx2.h"  // SPW_INLINE, SPW_UNROLL, exp_v (compiled under the file's target)

namespace spillway::ops::detail {
namespace {

// SiLU(g) u = g / (1 + e^-g) u.
template <class V>
SPW_INLINE typename V::V swiglu_v(typename V::V g, typename V::V u) {
  const typename V::V e = exp_v<V>(V::neg(g));
  return V::mul(V::div(g, V::add(V::set1(1.0f), e)), u);
}

// GELU(x) u, tanh form: x / (1 + e^(-2 sqrt(2/pi) (x + 0.044715 x^3))) u.
template <class V>
SPW_INLINE typename V::V geglu_v(typename V::V x, typename V::V u) {
  const typename V::V x3 = V::mul(V::mul(x, x), x);
  const typename V::V e = exp_v<V>(V::mul(V::set1(-1.5957691216057308f),  // -2 sqrt(2/pi)
                                          V::fmadd(V::set1(0.044715f), x3, x)));
  return V::mul(V::div(x, V::add(V::set1(1.0f), e)), u);
}

// gate[i] = f(gate[i], up[i]) for the element-wise gates above.
template <class V, typename V::V (*F)(typename V::V, typename V::V), class Tail>
SPW_INLINE void gated(float* gate, const float* up, int64_t n, Tail tail) {
  constexpr int L = V::kLanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) V::storeu(gate + i, F(V::loadu(gate + i), V::loadu(up + i)));
  if constexpr (V::kMaskedTail) {
    if (i < n) {
      const auto m = V::first(n - i);
      V::storeu_masked(gate + i, m, F(V::loadu_masked(m, gate + i), V::loadu_masked(m, up + i)));
    }
  } else {
    for (; i < n; ++i) gate[i] = tail(gate[i], up[i]);
  }
}

template <class V>
void swiglu_rows(float* gate, const float* up, int64_t n) {
  gated<V, swiglu_v<V>>(gate, up, n,
                        [](float g, float u) { return g / (1.0f + exp_tail(-g)) * u; });
}

template <class V>
void geglu_rows(float* gate, const float* up, int64_t n) {
  gated<V, geglu_v<V>>(gate, up, n, [](float x, float u) {
    return x / (1.0f + exp_tail(-1.5957691216057308f * (x + 0.044715f * x * x * x))) * u;
  });
}

template <class V>
void softmax_rows(float* x, int64_t n) {
  using F = typename V::V;
  constexpr int L = V::kLanes;
  if (n <= 0) return;
  F vmax = V::set1(-INFINITY);
  int64_t i = 0;
  for (; i + L <= n; i += L) vmax = V::max(vmax, V::loadu(x + i));
  const int64_t nv = i;  // the vector part: [0, nv)
  float mx;
  if constexpr (V::kMaskedTail) {
    const auto tail = V::first(n - nv);
    mx = V::hmax(V::max(vmax, V::loadu_masked(V::set1(-INFINITY), tail, x + nv)));
  } else {
    mx = V::hmax(vmax);
    for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  }
  const F m = V::set1(mx);
  F vsum = V::zero();
  i = 0;
  for (; i + L <= n; i += L) {
    const F e = exp_v<V>(V::sub(V::loadu(x + i), m));
    V::storeu(x + i, e);
    vsum = V::add(vsum, e);
  }
  float sum;
  if constexpr (V::kMaskedTail) {
    const auto tail = V::first(n - nv);
    if (n > nv) {
      // Masked-off lanes hold -inf: exp gives 0 and the sum is unchanged.
      const F e = exp_v<V>(V::sub(V::loadu_masked(V::set1(-INFINITY), tail, x + nv), m));
      V::storeu_masked(x + nv, tail, e);
      vsum = V::add(vsum, e);
    }
    sum = V::hsum(vsum);
  } else {
    sum = V::hsum(vsum);
    for (; i < n; ++i) {
      x[i] = exp_tail(x[i] - mx);
      sum += x[i];
    }
  }
  const F inv = V::set1(1.0f / sum);
  i = 0;
  for (; i + L <= n; i += L) V::storeu(x + i, V::mul(V::loadu(x + i), inv));
  if constexpr (V::kMaskedTail) {
    if (n > nv) {
      const auto tail = V::first(n - nv);
      V::storeu_masked(x + nv, tail, V::mul(V::loadu_masked(tail, x + nv), inv));
    }
  } else {
    const float s = 1.0f / sum;
    for (; i < n; ++i) x[i] *= s;
  }
}

template <class V>
void rmsnorm_rows(const float* x, const float* w, float* y, int64_t n, float eps) {
  using F = typename V::V;
  constexpr int L = V::kLanes;
  F acc = V::zero();
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const F v = V::loadu(x + i);
    acc = V::fmadd(v, v, acc);
  }
  const int64_t nv = i;
  float ss;
  if constexpr (V::kMaskedTail) {
    const F t = V::loadu_masked(V::first(n - nv), x + nv);
    ss = V::hsum(V::fmadd(t, t, acc));
  } else {
    ss = V::hsum(acc);
    for (; i < n; ++i) ss += x[i] * x[i];
  }
  const float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  const F s = V::set1(scale);
  i = 0;
  for (; i + L <= n; i += L) {
    V::storeu(y + i, V::mul(V::mul(V::loadu(x + i), s), V::loadu(w + i)));
  }
  if constexpr (V::kMaskedTail) {
    if (n > nv) {
      const auto tail = V::first(n - nv);
      V::storeu_masked(
          y + nv, tail,
          V::mul(V::mul(V::loadu_masked(tail, x + nv), s), V::loadu_masked(tail, w + nv)));
    }
  } else {
    for (; i < n; ++i) y[i] = x[i] * scale * w[i];
  }
}

}  // namespace
}  // namespace spillway::ops::detail
