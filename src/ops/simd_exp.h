// e^x for every family's f32 vectors, written once on the vector trait V (simd_avx2.h:
// Avx2F32, simd_avx512.h: Avx512F32), so that every family computes the same bits per
// lane. x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two for an exact product), e^r by
// a degree-7 polynomial (Taylor-like coefficients fitted for float), times 2^n built in
// the exponent bits. Relative error below 1e-6 against std::exp for inputs in [-87, 88];
// inputs below -87.3 give 0, above 88.7 give +inf. Internal linkage: included by the
// families' simd headers, under their target pragmas.
#pragma once

#include <cmath>

namespace spillway::ops::detail {
namespace {

template <class V>
SPW_INLINE typename V::V exp_v(typename V::V x) {
  using F = typename V::V;
  const F lo = V::set1(-87.3f);
  const auto keep = V::ge(x, lo);
  const auto big = V::gt(x, V::set1(88.7f));
  x = V::min(V::max(x, lo), V::set1(88.0f));
  const F n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  F r = V::fnmadd(n, V::set1(0.693359375f), x);
  r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
  F p = V::set1(1.9875691500e-4f);
  p = V::fmadd(p, r, V::set1(1.3981999507e-3f));
  p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
  p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
  p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
  p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
  p = V::fmadd(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::select(big, V::mul_where(keep, p, V::pow2i(n)), V::set1(INFINITY));
}

}  // namespace
}  // namespace spillway::ops::detail
