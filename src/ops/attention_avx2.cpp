// AVX2 attention piece kernel (with FMA and F16C for f16 caches): scores four keys at a
// time for up to four query heads sharing each key load, the softmax numerators with a
// vectorized exp, then the value sums in 16-wide column slices held in registers.
// Compiled for AVX2 by target attributes and called only after a CPU check
// (attention.cpp). Uses no standard-library templates (see matmul_avx2.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"
#include "spillway/ops/attention.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include "simd_avx2.h"

namespace spillway::ops::detail {

namespace {

constexpr int64_t kScoreRow = kAttnPiece + 8;  // room to pad a row to a multiple of 8
constexpr int64_t kValueBlock = 32;            // keys per block of the value sums

// Elements [i, i + 8) of a cached row (i a multiple of 8). A Q8_0 element is its block's
// scale times its int8, exact in f32 as in the scalar kernel.
template <DType T>
inline __m256 load8(const uint8_t* row, int64_t i) {
  if constexpr (T == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
  } else if constexpr (T == DType::Q8_0) {
    const uint8_t* b = row + (i >> 5) * 34;
    uint16_t h;
    __builtin_memcpy(&h, b, 2);
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + (i & 31)));
    return _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
  }
}

// Four vectors of partial dot products -> their four totals.
inline __m128 reduce4(const __m256* a) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// GN heads of one group (query offset qoff within each run's q) over the clipped runs:
// part_max[g], part_sum[g] and part_acc[g][d] of the piece.
template <int GN, DType T>
void slice(bool first_slice, const KeyRun* sub, int n_sub, int64_t total, int64_t qoff, int64_t d,
           const uint8_t* kb, const uint8_t* vb, uint64_t row, float scale, float* part_max,
           float* part_sum, float* part_acc, float (*sc)[kScoreRow]) {
  int32_t slots[kAttnPiece];  // slot of each key position of the piece
  // Scores, scaled.
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t n = 0;
  for (int r = 0; r < n_sub; ++r) {
    const float* q[GN];
    SPW_UNROLL for (int g = 0; g < GN; ++g) q[g] = sub[r].q + qoff + g * d;
    int32_t j = sub[r].begin;
    for (int32_t jj = j; jj < sub[r].end; ++jj) slots[n + (jj - j)] = jj;
    for (; j + 4 <= sub[r].end; j += 4, n += 4) {
      const uint8_t* kr = kb + row * static_cast<uint64_t>(j);
      if (first_slice) prefetch_key_block(kr, vb + row * static_cast<uint64_t>(j), row);
      __m256 a[GN][4];
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int c = 0; c < 4; ++c) a[g][c] = _mm256_setzero_ps();
      }
      for (int64_t i = 0; i < d; i += 8) {
        __m256 kv[4];
        SPW_UNROLL for (int c = 0; c < 4; ++c) kv[c] = load8<T>(kr + c * row, i);
        SPW_UNROLL for (int g = 0; g < GN; ++g) {
          const __m256 qv = _mm256_loadu_ps(q[g] + i);
          SPW_UNROLL for (int c = 0; c < 4; ++c) a[g][c] = _mm256_fmadd_ps(qv, kv[c], a[g][c]);
        }
      }
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        _mm_storeu_ps(&sc[g][n], _mm_mul_ps(reduce4(a[g]), vscale));
      }
    }
    // Single keys: the same products and the same reduction order as in a block of four,
    // so that a key's score does not depend on where the runs break.
    for (; j < sub[r].end; ++j, ++n) {
      const uint8_t* kr = kb + row * static_cast<uint64_t>(j);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
        for (int64_t i = 0; i < d; i += 8) {
          a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + i), load8<T>(kr, i), a[0]);
        }
        sc[g][n] = _mm_cvtss_f32(_mm_mul_ss(reduce4(a), vscale));
      }
    }
  }

  // Softmax numerators relative to the piece's max; rows padded with -inf (exp gives 0).
  const int64_t padded = (total + 7) / 8 * 8;
  SPW_UNROLL for (int g = 0; g < GN; ++g) {
    float* s = sc[g];
    for (int64_t i = total; i < padded; ++i) s[i] = -INFINITY;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (int64_t i = 0; i < padded; i += 8) vmax = _mm256_max_ps(vmax, _mm256_load_ps(s + i));
    const float m = hmax(vmax);
    const __m256 vm = _mm256_set1_ps(m);
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t i = 0; i < padded; i += 8) {
      const __m256 e = exp_ps(_mm256_sub_ps(_mm256_load_ps(s + i), vm));
      _mm256_store_ps(s + i, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    part_max[g] = m;
    part_sum[g] = hsum(vsum);
  }

  // Weighted values, 16 columns at a time for all GN heads, over blocks of kValueBlock keys
  // so that the block's value rows stay in L1 across the column passes. Each output lane
  // still sums its keys in order.
  for (int64_t n0 = 0; n0 < total; n0 += kValueBlock) {
    const int64_t n1 = n0 + kValueBlock < total ? n0 + kValueBlock : total;
    for (int64_t c0 = 0; c0 < d; c0 += 16) {
      __m256 o[GN][2];
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        if (n0 == 0) {
          o[g][0] = o[g][1] = _mm256_setzero_ps();
        } else {
          o[g][0] = _mm256_loadu_ps(part_acc + g * d + c0);
          o[g][1] = _mm256_loadu_ps(part_acc + g * d + c0 + 8);
        }
      }
      for (int64_t i = n0; i < n1; ++i) {
        const uint8_t* vr = vb + row * static_cast<uint64_t>(slots[i]);
        const __m256 v0 = load8<T>(vr, c0), v1 = load8<T>(vr, c0 + 8);
        SPW_UNROLL for (int g = 0; g < GN; ++g) {
          const __m256 p = _mm256_broadcast_ss(&sc[g][i]);
          o[g][0] = _mm256_fmadd_ps(p, v0, o[g][0]);
          o[g][1] = _mm256_fmadd_ps(p, v1, o[g][1]);
        }
      }
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        _mm256_storeu_ps(part_acc + g * d + c0, o[g][0]);
        _mm256_storeu_ps(part_acc + g * d + c0 + 8, o[g][1]);
      }
    }
  }
}

template <DType T>
void piece(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub, int64_t total,
           const void* k, const void* v, float* part) {
  const int64_t d = s.head_dim;
  const int G = static_cast<int>(s.n_head / s.n_head_kv);
  const uint64_t head_off = kv_bytes(T, kv_head * s.head_stride);
  const auto* kb = static_cast<const uint8_t*>(k) + head_off;
  const auto* vb = static_cast<const uint8_t*>(v) + head_off;
  const uint64_t row = kv_bytes(T, d);
  alignas(32) float sc[4][kScoreRow];
  for (int g0 = 0; g0 < G; g0 += 4) {
    const int64_t qoff = (kv_head * G + g0) * d;
    float* pm = part + g0;
    float* ps = part + G + g0;
    float* pa = part + 2 * G + g0 * d;
    switch (G - g0 < 4 ? G - g0 : 4) {
      case 1:
        slice<1, T>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa, sc);
        break;
      case 2:
        slice<2, T>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa, sc);
        break;
      case 3:
        slice<3, T>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa, sc);
        break;
      default:
        slice<4, T>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa, sc);
        break;
    }
  }
}

}  // namespace

void attend_piece_avx2(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                       int64_t total, const void* k, const void* v, float* part) {
  switch (s.kv_type) {
    case DType::F16:
      piece<DType::F16>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    case DType::Q8_0:
      piece<DType::Q8_0>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    default:
      piece<DType::F32>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
  }
}

}  // namespace spillway::ops::detail

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
