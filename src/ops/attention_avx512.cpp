// AVX-512 attention piece kernel (f32 or f16 caches): the AVX2 kernel's structure 16 lanes
// wide. Scores four keys at a time for up to four query heads sharing each key load (each
// key's 16-lane products folded to 8 lanes, then reduced as in the AVX2 kernel, for single
// keys too, so that a key's score does not depend on where the runs break), the softmax
// numerators with the 16-lane exp, then the value sums in column slices of 64 (or 32)
// held in registers. For the head sizes 64 and 128 the key loop is unrolled and the heads'
// query rows stay in registers across the keys (where they fit beside the accumulators)
// instead of being reloaded for every block of 4 keys, where the query loads competed with
// the key loads for the load ports. Needs head_dim % 32 == 0. Compiled for AVX-512 by
// target attributes and called only after a CPU check (kernels.cpp). Uses no
// standard-library templates (see matmul_avx2.cpp).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"
#include "spillway/ops/attention.h"

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

constexpr int64_t kScoreRow = kAttnPiece + 16;  // room to pad a row to a multiple of 16
constexpr int64_t kValueBlock = 32;             // keys per block of the value sums

// Elements [i, i + 16) of a cached row (i a multiple of 16). A Q8_0 element is its
// block's scale times its int8, exact in f32 as in the scalar kernel.
template <DType T>
inline __m512 load16(const uint8_t* row, int64_t i) {
  if constexpr (T == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i)));
  } else if constexpr (T == DType::Q8_0) {
    const uint8_t* b = row + (i >> 5) * 34;
    uint16_t h;
    __builtin_memcpy(&h, b, 2);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + (i & 31)));
    return _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(h)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
  } else {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + i);
  }
}

inline __m256 fold(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
}

// Four vectors of partial dot products -> their four totals.
inline __m128 reduce4(const __m512* a) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(fold(a[0]), fold(a[1])),
                                  _mm256_hadd_ps(fold(a[2]), fold(a[3])));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Whether GN query rows of D elements (D > 0: the head size known at compile time) fit in
// registers beside the 4 GN score accumulators and the 4 keys of a block (32 zmm).
template <int GN, int D>
inline constexpr bool kQueryInRegisters = D > 0 && (D / 16) * GN + 4 * GN + 4 <= 32;

// The GN x 4 partial dot products of a block of 4 keys at kr (rows `row` bytes apart) with
// the query rows q[g], 16 lanes each: a[g][c] sums q[g][i..i+16) k_c[i..i+16) over i in
// order, whichever way the rows are held (qreg: kQueryInRegisters; else q, d elements).
template <int GN, DType T, int D>
inline void block_dots(const uint8_t* kr, uint64_t row, const float* const* q,
                       const __m512 (*qreg)[D > 0 ? D / 16 : 1], int64_t d, __m512 (*a)[4]) {
  SPW_UNROLL for (int g = 0; g < GN; ++g) {
    SPW_UNROLL for (int c = 0; c < 4; ++c) a[g][c] = _mm512_setzero_ps();
  }
  if constexpr (kQueryInRegisters<GN, D>) {
    SPW_UNROLL for (int i = 0; i < D; i += 16) {
      __m512 kv[4];
      SPW_UNROLL for (int c = 0; c < 4; ++c) kv[c] = load16<T>(kr + c * row, i);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int c = 0; c < 4; ++c) {
          a[g][c] = _mm512_fmadd_ps(qreg[g][i / 16], kv[c], a[g][c]);
        }
      }
    }
  } else {
    for (int64_t i = 0; i < d; i += 16) {
      __m512 kv[4];
      SPW_UNROLL for (int c = 0; c < 4; ++c) kv[c] = load16<T>(kr + c * row, i);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        const __m512 qv = _mm512_loadu_ps(q[g] + i);
        SPW_UNROLL for (int c = 0; c < 4; ++c) a[g][c] = _mm512_fmadd_ps(qv, kv[c], a[g][c]);
      }
    }
  }
}

// GN heads of one group (query offset qoff within each run's q) over the clipped runs:
// part_max[g], part_sum[g] and part_acc[g][d] of the piece. NV: zmm registers per head in
// a column slice of the value sums (16 NV columns; d % (16 NV) == 0). D: d when it is
// known at compile time (64, 128), else 0.
template <int GN, int NV, DType T, int D>
void slice(bool first_slice, const KeyRun* sub, int n_sub, int64_t total, int64_t qoff, int64_t d,
           const uint8_t* kb, const uint8_t* vb, uint64_t row, float scale, float* part_max,
           float* part_sum, float* part_acc, float (*sc)[kScoreRow]) {
  int32_t slots[kAttnPiece];  // slot of each key position of the piece
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t n = 0;
  for (int r = 0; r < n_sub; ++r) {
    const float* q[GN];
    SPW_UNROLL for (int g = 0; g < GN; ++g) q[g] = sub[r].q + qoff + g * d;
    __m512 qreg[GN][D > 0 ? D / 16 : 1];
    if constexpr (kQueryInRegisters<GN, D>) {
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int u = 0; u < D / 16; ++u) qreg[g][u] = _mm512_loadu_ps(q[g] + 16 * u);
      }
    }
    int32_t j = sub[r].begin;
    for (int32_t jj = j; jj < sub[r].end; ++jj) slots[n + (jj - j)] = jj;
    for (; j + 4 <= sub[r].end; j += 4, n += 4) {
      const uint8_t* kr = kb + row * static_cast<uint64_t>(j);
      if (first_slice) prefetch_key_block(kr, vb + row * static_cast<uint64_t>(j), row);
      __m512 a[GN][4];
      block_dots<GN, T, D>(kr, row, q, qreg, d, a);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        _mm_storeu_ps(&sc[g][n], _mm_mul_ps(reduce4(a[g]), vscale));
      }
    }
    for (; j < sub[r].end; ++j, ++n) {
      const uint8_t* kr = kb + row * static_cast<uint64_t>(j);
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                       _mm512_setzero_ps()};
        for (int64_t i = 0; i < d; i += 16) {
          a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(q[g] + i), load16<T>(kr, i), a[0]);
        }
        sc[g][n] = _mm_cvtss_f32(_mm_mul_ss(reduce4(a), vscale));
      }
    }
  }

  // Softmax numerators relative to the piece's max; rows padded with -inf (exp gives 0).
  const int64_t padded = (total + 15) / 16 * 16;
  SPW_UNROLL for (int g = 0; g < GN; ++g) {
    float* s = sc[g];
    for (int64_t i = total; i < padded; ++i) s[i] = -INFINITY;
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < padded; i += 16) vmax = _mm512_max_ps(vmax, _mm512_load_ps(s + i));
    const float m = hmax16(vmax);
    const __m512 vm = _mm512_set1_ps(m);
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t i = 0; i < padded; i += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_load_ps(s + i), vm));
      _mm512_store_ps(s + i, e);
      vsum = _mm512_add_ps(vsum, e);
    }
    part_max[g] = m;
    part_sum[g] = hsum16(vsum);
  }

  // Weighted values, 16 NV columns at a time for all GN heads, over blocks of kValueBlock
  // keys so that the block's value rows stay in L1 across the column passes. Each output
  // lane sums its keys in order.
  for (int64_t n0 = 0; n0 < total; n0 += kValueBlock) {
    const int64_t n1 = n0 + kValueBlock < total ? n0 + kValueBlock : total;
    for (int64_t c0 = 0; c0 < d; c0 += 16 * NV) {
      __m512 o[GN][NV];
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int u = 0; u < NV; ++u) {
          o[g][u] = n0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(part_acc + g * d + c0 + 16 * u);
        }
      }
      for (int64_t i = n0; i < n1; ++i) {
        const uint8_t* vr = vb + row * static_cast<uint64_t>(slots[i]);
        __m512 vv[NV];
        SPW_UNROLL for (int u = 0; u < NV; ++u) vv[u] = load16<T>(vr, c0 + 16 * u);
        SPW_UNROLL for (int g = 0; g < GN; ++g) {
          const __m512 p = _mm512_set1_ps(sc[g][i]);
          SPW_UNROLL for (int u = 0; u < NV; ++u) o[g][u] = _mm512_fmadd_ps(p, vv[u], o[g][u]);
        }
      }
      SPW_UNROLL for (int g = 0; g < GN; ++g) {
        SPW_UNROLL for (int u = 0; u < NV; ++u) {
          _mm512_storeu_ps(part_acc + g * d + c0 + 16 * u, o[g][u]);
        }
      }
    }
  }
}

template <int NV, DType T, int D>
void piece(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub, int64_t total,
           const void* k, const void* v, float* part) {
  const int64_t d = s.head_dim;
  const int G = static_cast<int>(s.n_head / s.n_head_kv);
  const uint64_t head_off = kv_bytes(T, kv_head * s.head_stride);
  const auto* kb = static_cast<const uint8_t*>(k) + head_off;
  const auto* vb = static_cast<const uint8_t*>(v) + head_off;
  const uint64_t row = kv_bytes(T, d);
  alignas(64) float sc[4][kScoreRow];
  for (int g0 = 0; g0 < G; g0 += 4) {
    const int64_t qoff = (kv_head * G + g0) * d;
    float* pm = part + g0;
    float* ps = part + G + g0;
    float* pa = part + 2 * G + g0 * d;
    switch (G - g0 < 4 ? G - g0 : 4) {
      case 1:
        slice<1, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                           sc);
        break;
      case 2:
        slice<2, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                           sc);
        break;
      case 3:
        slice<3, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                           sc);
        break;
      default:
        slice<4, NV, T, D>(g0 == 0, sub, n_sub, total, qoff, d, kb, vb, row, s.scale, pm, ps, pa,
                           sc);
        break;
    }
  }
}

// The piece kernel for one cache type: NV = 4 column registers where head_dim % 64 == 0
// (else 2), with the head sizes 64 and 128 compiled in.
template <DType T>
void piece_of_type(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                   int64_t total, const void* k, const void* v, float* part) {
  switch (s.head_dim) {
    case 64:
      piece<4, T, 64>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    case 128:
      piece<4, T, 128>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    default:
      if (s.head_dim % 64 == 0) {
        piece<4, T, 0>(s, kv_head, sub, n_sub, total, k, v, part);
      } else {
        piece<2, T, 0>(s, kv_head, sub, n_sub, total, k, v, part);
      }
      break;
  }
}

}  // namespace

void attend_piece_avx512(const AttentionShape& s, int64_t kv_head, const KeyRun* sub, int n_sub,
                         int64_t total, const void* k, const void* v, float* part) {
  switch (s.kv_type) {
    case DType::F16:
      piece_of_type<DType::F16>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    case DType::Q8_0:
      piece_of_type<DType::Q8_0>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
    default:
      piece_of_type<DType::F32>(s, kv_head, sub, n_sub, total, k, v, part);
      break;
  }
}

}  // namespace spillway::ops::detail

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
