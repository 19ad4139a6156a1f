// The attention piece kernel, written once for the SIMD families: templated on the
// family's vector trait V (simd_avx2.h: Avx2F32, 8 lanes; simd_avx512.h: Avx512F32, 16
// lanes) and instantiated by each family's file under its target pragma.
//
// Scores four keys at a time for up to four query heads sharing each key load (a key's
// products reduced by V::reduce4, for single keys too, so that a key's score does not
// depend on where the runs break), the softmax numerators with exp_v (simd_exp.h), then the value
// sums in column slices of NV vectors held in registers. Where the head size D is known at
// compile time and the heads' query rows fit in registers beside the accumulators, they
// stay there across the keys instead of being reloaded for every block of 4 keys (the
// query loads competed with the key loads for the load ports). Needs head_dim % (NV
// lanes) == 0.
//
// Internal linkage: include only after the family file's target pragma, after its simd
// header. No standard-library templates (see matmul_avx2.cpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "simd_avx2.h"  // SPW_INLINE, SPW_UNROLL, exp_v (compiled under the file's target)

#include "kernels.h"
#include "spillway/ops/attention.h"

namespace spillway::ops::detail {
namespace {

constexpr int64_t kValueBlock = 32;  // keys per block of the value sums

// Room in a score row to pad it to a multiple of the lanes.
template <class V>
inline constexpr int64_t kScoreRow = kAttnPiece + V::kLanes;

// Whether GN query rows of D elements (D > 0: the head size known at compile time) fit in
// registers beside the 4 GN score accumulators and the 4 keys of a block.
template <class V, int GN, int D>
inline constexpr bool kQueryInRegisters = D > 0 &&
                                          (D / V::kLanes) * GN + 4 * GN + 4 <= V::kRegisters;

// The GN x 4 partial dot products of a block of 4 keys at kr (rows `row` bytes apart) with
// the query rows q[g]: a[g][c] sums q[g][i..i+L) k_c[i..i+L) over i in order, whichever
// way the rows are held (qreg: kQueryInRegisters; else q, d elements).
template <class V, int GN, DType T, int D>
SPW_INLINE void block_dots(const uint8_t* kr, uint64_t row, const float* const* q,
                           const typename V::V (*qreg)[D > 0 ? D / V::kLanes : 1], int64_t d,
                           typename V::V (*a)[4]) {
  using F = typename V::V;
  constexpr int L = V::kLanes;
  SPW_UNROLL for (int g = 0; g < GN; ++g) {
    SPW_UNROLL for (int c = 0; c < 4; ++c) a[g][c] = V::zero();
  }
  if constexpr (kQueryInRegisters<V, GN, D>) {
    SPW_UNROLL for (int i = 0; i < D; i += L) {
      F kv[4];
      SPW_UNROLL for (int c = 0; c < 4; ++c) kv[c] = V::template load_kv<T>(kr + c * row, i);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int c = 0; c < 4; ++c) a[g][c] = V::fmadd(qreg[g][i / L], kv[c], a[g][c]);
      }
    }
  } else {
    for (int64_t i = 0; i < d; i += L) {
      F kv[4];
      SPW_UNROLL for (int c = 0; c < 4; ++c) kv[c] = V::template load_kv<T>(kr + c * row, i);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        const F qv = V::loadu(q[g] + i);
        SPW_UNROLL for (int c = 0; c < 4; ++c) a[g][c] = V::fmadd(qv, kv[c], a[g][c]);
      }
    }
  }
}

// GN heads of one group (query offset qoff within each run's q) over the clipped runs:
// part_max[g], part_sum[g] and part_acc[g][d] of the piece. NV: vectors per head in a
// column slice of the value sums (L NV columns; d % (L NV) == 0). D: d when it is known at
// compile time, else 0.
template <class V, int GN, int NV, DType T, int D>
SPW_INLINE void slice(bool first_slice, const KeyRun* sub, int n_sub, int64_t total, int64_t qoff,
                      int64_t d, const uint8_t* kb, const uint8_t* vb, uint64_t row, float scale,
                      float* part_max, float* part_sum, float* part_acc,
                      float (*sc)[kScoreRow<V>]) {
  using F = typename V::V;
  constexpr int L = V::kLanes;
  int32_t slots[kAttnPiece];  // slot of each key position of the piece
  // Scores, scaled.
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t n = 0;
  for (int r = 0; r < n_sub; ++r) {
    const float* q[GN];
    SPW_UNROLL for (int g = 0; g < GN; ++g) q[g] = sub[r].q + qoff + g * d;
    F qreg[GN][D > 0 ? D / L : 1];
    if constexpr (kQueryInRegisters<V, GN, D>) {
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int u = 0; u < D / L; ++u) qreg[g][u] = V::loadu(q[g] + L * u);
      }
    }
    int32_t j = sub[r].begin;
    for (int32_t jj = j; jj < sub[r].end; ++jj) slots[n + (jj - j)] = jj;
    for (; j + 4 <= sub[r].end; j += 4, n += 4) {
      const uint8_t* kr = kb + row * static_cast<uint64_t>(j);
      if (first_slice) prefetch_key_block(kr, vb + row * static_cast<uint64_t>(j), row);
      F a[GN][4];
      block_dots<V, GN, T, D>(kr, row, q, qreg, d, a);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        _mm_storeu_ps(&sc[g][n], _mm_mul_ps(V::reduce4(a[g]), vscale));
      }
    }
    // Single keys: the same products and the same reduction order as in a block of four,
    // so that a key's score does not depend on where the runs break.
    for (; j < sub[r].end; ++j, ++n) {
      const uint8_t* kr = kb + row * static_cast<uint64_t>(j);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        F a[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
        for (int64_t i = 0; i < d; i += L) {
          a[0] = V::fmadd(V::loadu(q[g] + i), V::template load_kv<T>(kr, i), a[0]);
        }
        sc[g][n] = _mm_cvtss_f32(_mm_mul_ss(V::reduce4(a), vscale));
      }
    }
  }

  // Softmax numerators relative to the piece's max; rows padded with -inf (exp gives 0).
  const int64_t padded = (total + L - 1) / L * L;
  SPW_UNROLL for (int g = 0; g < GN; ++g) {
    float* s = sc[g];
    for (int64_t i = total; i < padded; ++i) s[i] = -INFINITY;
    F vmax = V::set1(-INFINITY);
    for (int64_t i = 0; i < padded; i += L) vmax = V::max(vmax, V::load(s + i));
    const float m = V::hmax(vmax);
    const F vm = V::set1(m);
    F vsum = V::zero();
    for (int64_t i = 0; i < padded; i += L) {
      const F e = exp_v<V>(V::sub(V::load(s + i), vm));
      V::store(s + i, e);
      vsum = V::add(vsum, e);
    }
    part_max[g] = m;
    part_sum[g] = V::hsum(vsum);
  }

  // Weighted values, L NV columns at a time for all GN heads, over blocks of kValueBlock
  // keys so that the block's value rows stay in L1 across the column passes. Each output
  // lane sums its keys in order.
  for (int64_t n0 = 0; n0 < total; n0 += kValueBlock) {
    const int64_t n1 = n0 + kValueBlock < total ? n0 + kValueBlock : total;
    for (int64_t c0 = 0; c0 < d; c0 += L * NV) {
      F o[GN][NV];
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int u = 0; u < NV; ++u) {
          o[g][u] = n0 == 0 ? V::zero() : V::loadu(part_acc + g * d + c0 + L * u);
        }
      }
      for (int64_t i = n0; i < n1; ++i) {
        const uint8_t* vr = vb + row * static_cast<uint64_t>(slots[i]);
        F vv[NV];
        SPW_UNROLL for (int u = 0; u < NV; ++u) vv[u] = V::template load_kv<T>(vr, c0 + L * u);
        SPW_UNROLL for (int g = 0; g < GN; ++g) {
          const F p = V::broadcast(&sc[g][i]);
          SPW_UNROLL for (int u = 0; u < NV; ++u) o[g][u] = V::fmadd(p, vv[u], o[g][u]);
        }
      }
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int u = 0; u < NV; ++u) V::storeu(part_acc + g * d + c0 + L * u, o[g][u]);
      }
    }
  }
}

// The piece (the contract of ops::attend_piece) for one cache type T, NV vectors per value
// column slice and the head size D (0: known only at run time).
template <class V, int NV, DType T, int D>
void piece(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub, int64_t total,
           const void* k, const void* v, float* part) {
  const int64_t d = s.head_dim;
  const int G = static_cast<int>(s.n_head / s.n_head_kv);
  const uint64_t head_off = kv_bytes(T, kv_head * s.head_stride);
  const auto* kb = static_cast<const uint8_t*>(k) + head_off;
  const auto* vb = static_cast<const uint8_t*>(v) + head_off;
  const uint64_t row = kv_bytes(T, d);
  alignas(V::kAlign) float sc[4][kScoreRow<V>];
  for (int g0 = 0; g0 < G; g0 += 4) {
    const int64_t qoff = (kv_head * G + g0) * d;
    float* pm = part + g0;
    float* ps = part + G + g0;
    float* pa = part + 2 * G + g0 * d;
    switch (G - g0 < 4 ? G - g0 : 4) {
      case 1:
        slice<V, 1, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                              sc);
        break;
      case 2:
        slice<V, 2, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                              sc);
        break;
      case 3:
        slice<V, 3, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                              sc);
        break;
      default:
        slice<V, 4, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                              sc);
        break;
    }
  }
}

// attend_piece for every cache type, the head shape chosen by Shape<T>::run (the family's
// choice of NV and compiled-in head sizes).
template <template <DType> class Shape>
void attend_piece_of(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                     int64_t total, const void* k, const void* v, float* part) {
  switch (s.kv_type) {
    case DType::F16:
      Shape<DType::F16>::run(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    case DType::Q8_0:
      Shape<DType::Q8_0>::run(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    default:
      Shape<DType::F32>::run(s, kv_head, sub, n_sub, total, k, v, part);
      break;
  }
}

}  // namespace
}  // namespace spillway::ops::detail
