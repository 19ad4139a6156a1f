// AVX2 kernels (with FMA and F16C): quantized weight blocks x 8-bit activation blocks,
// integer products with vpmaddubsw / vpmaddwd, f32 accumulation per block. Compiled for
// AVX2 by target attributes whatever the build flags, and called only after a CPU check.
//
// Legacy types (Q4_0, Q4_1, Q8_0) run an R x C micro-kernel: R weight rows x C tokens,
// each weight block unpacked once per tile and reused for C tokens, each activation
// block loaded once and reused for R rows. K types (Q4_K, Q6_K) unpack one row's
// super-block (values and scales) once for C tokens.
//
// Everything here sits in an anonymous namespace and uses no standard-library templates:
// code compiled for AVX2 must not leak into inline functions shared with other files.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "matmul_internal.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

// Fully unrolls the tiny loops over tile rows / tokens so that the accumulator arrays
// live in registers.
#if defined(__clang__)
#define SPW_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SPW_UNROLL _Pragma("GCC unroll 16")
#else
#define SPW_UNROLL
#endif

namespace spillway::ops::detail {

namespace {

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline float f16(const uint8_t* p) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(p))));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high (16..31).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i q = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
}

// Legacy weight blocks for the micro-kernel. load() unpacks block `p` into `q` (the
// unsigned operand of vpmaddubsw), `sign` (Q8_0: the signs to move onto the activations),
// and returns {d, m} (m: additive term per unit of activation sum; Q4_1: m, Q4_0: -8 d).
struct Q4_0W {
  static constexpr int kBytes = 18;
  static constexpr bool kHasMin = true;
  static constexpr int kR = 4, kC = 2;  // micro-tile: fits the 16 ymm registers
  static inline __m128 load(const uint8_t* p, __m256i& q, __m256i&) {
    const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(p)));
    q = unpack_nibbles(p + 2);
    return _mm_unpacklo_ps(d, _mm_mul_ss(d, _mm_set_ss(-8.0f)));
  }
  static inline __m256i dot(__m256i q, __m256i, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
  }
};

struct Q4_1W {
  static constexpr int kBytes = 20;
  static constexpr bool kHasMin = true;
  static constexpr int kR = 4, kC = 2;
  static inline __m128 load(const uint8_t* p, __m256i& q, __m256i&) {
    q = unpack_nibbles(p + 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(load_u32(p))));
  }
  static inline __m256i dot(__m256i q, __m256i, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
  }
};

struct Q8_0W {
  static constexpr int kBytes = 34;
  static constexpr bool kHasMin = false;
  static constexpr int kR = 2, kC = 4;  // two registers per weight block (|w|, w)
  static inline __m128 load(const uint8_t* p, __m256i& q, __m256i& sign) {
    sign = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
    q = _mm256_sign_epi8(sign, sign);  // |w|; -128 stays 0x80 = 128 unsigned
    return _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(p)));
  }
  static inline __m256i dot(__m256i q, __m256i sign, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_sign_epi8(x, sign)),
                             _mm256_set1_epi16(1));
  }
};

// y[c * ldy + r] = row r . token c for R rows starting at `w0` (stride `rb` bytes) and C
// activation rows. The per-block f32 terms: acc[r][c] += isum * (d_r * dx_c) in 8 lanes;
// the min terms of all R rows share one 4-lane vector per token: macc[c][r] += m_r * s_c.
//
// When `pf` is set (matrix-vector products), the R rows at pf (the next group) are
// prefetched meanwhile, R blocks' worth per block: at T = 1 weights stream from memory
// once per token, and the hardware prefetcher alone does not keep up with R interleaved
// row streams. The arithmetic does not depend on the tile shape, so decode (T = 1) and
// prefill (T > 1) give bit-identical results.
template <class W, int R, int C>
inline void micro_legacy(const uint8_t* w0, uint64_t rb, const Q8ARow* x, int64_t nb, float* y,
                         int64_t ldy, const uint8_t* pf = nullptr) {
  constexpr int kStep = R * W::kBytes;  // bytes of the next group per block
  static_assert(R <= 4);
  __m256 acc[R][C];
  __m128 macc[C];
  SPW_UNROLL for (int r = 0; r < R; ++r) {
    SPW_UNROLL for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  SPW_UNROLL for (int c = 0; c < C; ++c) macc[c] = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if (pf != nullptr) {
      SPW_UNROLL for (int i = 0; i < kStep; i += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(pf + b * kStep + i), _MM_HINT_T0);
      }
    }
    __m256i q[R], sg[R];
    alignas(16) float wd[4];
    alignas(16) float wm[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    SPW_UNROLL for (int r = 0; r < R; ++r) {
      const __m128 dm = W::load(w0 + r * rb + b * W::kBytes, q[r], sg[r]);
      _mm_store_ss(&wd[r], dm);
      if constexpr (W::kHasMin) _mm_store_ss(&wm[r], _mm_movehdup_ps(dm));
    }
    const __m128 mv = _mm_load_ps(wm);
    SPW_UNROLL for (int c = 0; c < C; ++c) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[c].qs + b * 32));
      const __m256 xd = _mm256_broadcast_ss(x[c].d + b);
      SPW_UNROLL for (int r = 0; r < R; ++r) {
        const __m256 p = _mm256_cvtepi32_ps(W::dot(q[r], sg[r], xv));
        acc[r][c] = _mm256_fmadd_ps(p, _mm256_mul_ps(_mm256_broadcast_ss(&wd[r]), xd), acc[r][c]);
      }
      if constexpr (W::kHasMin) macc[c] = _mm_fmadd_ps(mv, _mm_broadcast_ss(x[c].s + b), macc[c]);
    }
  }
  SPW_UNROLL for (int c = 0; c < C; ++c) {
    alignas(16) float m[4];
    _mm_store_ps(m, macc[c]);
    SPW_UNROLL for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum(acc[r][c]) + m[r];
  }
}

constexpr int64_t kPanel = 64;  // weight rows kept hot in cache while tokens stream by

template <class W, int R>
inline void micro_legacy_c(int c, const uint8_t* w0, uint64_t rb, const Q8ARow* x, int64_t nb,
                           float* y, int64_t ldy) {
  switch (c) {
    case 1:
      micro_legacy<W, R, 1>(w0, rb, x, nb, y, ldy);
      break;
    case 2:
      if constexpr (W::kC >= 2) micro_legacy<W, R, 2>(w0, rb, x, nb, y, ldy);
      break;
    case 3:
      if constexpr (W::kC >= 3) micro_legacy<W, R, 3>(w0, rb, x, nb, y, ldy);
      break;
    default:
      if constexpr (W::kC >= 4) micro_legacy<W, R, 4>(w0, rb, x, nb, y, ldy);
      break;
  }
}

template <class W>
void tile_legacy(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
                 int64_t t1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / kQK;
  const auto* base = static_cast<const uint8_t*>(w.data);
  const uint64_t rb = w.row_bytes;
  for (int64_t p0 = r0; p0 < r1; p0 += kPanel) {
    const int64_t p1 = min64(r1, p0 + kPanel);
    for (int64_t t = t0; t < t1; t += W::kC) {
      const int c = static_cast<int>(min64(W::kC, t1 - t));
      Q8ARow x[W::kC];
      for (int i = 0; i < c; ++i) x[i] = q8a_row(xq, w.cols, t + i);
      float* yt = y + t * ldy;
      int64_t r = p0;
      if (c == 1) {  // matrix-vector: registers to spare for 4 rows of every type
        for (; r + 4 <= p1; r += 4) {
          const uint8_t* w0 = base + r * rb;
          micro_legacy<W, 4, 1>(w0, rb, x, nb, yt + r, ldy, r + 8 <= r1 ? w0 + 4 * rb : nullptr);
        }
      }
      for (; r + W::kR <= p1; r += W::kR) {
        micro_legacy_c<W, W::kR>(c, base + r * rb, rb, x, nb, yt + r, ldy);
      }
      switch (p1 - r) {
        case 1:
          micro_legacy_c<W, 1>(c, base + r * rb, rb, x, nb, yt + r, ldy);
          break;
        case 2:
          if constexpr (W::kR > 2) micro_legacy_c<W, 2>(c, base + r * rb, rb, x, nb, yt + r, ldy);
          break;
        case 3:
          if (c == 1) {
            micro_legacy<W, 3, 1>(base + r * rb, rb, x, nb, yt + r, ldy);
          } else if constexpr (W::kR > 3) {
            micro_legacy_c<W, 3>(c, base + r * rb, rb, x, nb, yt + r, ldy);
          }
          break;
        default:
          break;
      }
    }
  }
}

void tile_q4_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy<Q4_0W>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q4_1(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy<Q4_1W>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q8_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy<Q8_0W>(w, xq, r0, r1, t0, t1, y, ldy);
}

// ---- K types: one weight row x C tokens per micro-kernel ----

constexpr int kKTokTile = 4;

inline __m256i scale_pair(int lo, int hi) {
  return _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(hi)),
                          _mm_set1_epi16(static_cast<int16_t>(lo)));
}

template <int C>
inline void micro_q4_k(const uint8_t* row, const BlockQ8_K* const* x, int64_t nb, float* y,
                       int64_t ldy) {
  __m256 acc[C];
  float macc[C];
  for (int c = 0; c < C; ++c) {
    acc[c] = _mm256_setzero_ps();
    macc[c] = 0.0f;
  }
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = row + b * 144;
    const float d = f16(p), dmin = f16(p + 2);
    int sc[8], mn[8];
    for (int j = 0; j < 8; ++j) k4_scale_min(p + 4, j, sc[j], mn[j]);
    __m256i iacc[C];
    for (int c = 0; c < C; ++c) iacc[c] = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 + 32 * k));
      const __m256i lo = _mm256_and_si256(raw, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
      const __m256i s_lo = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * k]));
      const __m256i s_hi = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * k + 1]));
      for (int c = 0; c < C; ++c) {
        const int8_t* xq = x[c][b].qs + 64 * k;
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
        const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s_lo);
        const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s_hi);
        iacc[c] = _mm256_add_epi32(iacc[c], _mm256_add_epi32(p0, p1));
      }
    }
    for (int c = 0; c < C; ++c) {
      const BlockQ8_K& xb = x[c][b];
      int32_t msum = 0;
      for (int j = 0; j < 8; ++j) msum += mn[j] * (xb.bsums[2 * j] + xb.bsums[2 * j + 1]);
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[c]), _mm256_set1_ps(d * xb.d), acc[c]);
      macc[c] -= dmin * xb.d * static_cast<float>(msum);
    }
  }
  for (int c = 0; c < C; ++c) y[c * ldy] = hsum(acc[c]) + macc[c];
}

template <int C>
inline void micro_q6_k(const uint8_t* row, const BlockQ8_K* const* x, int64_t nb, float* y,
                       int64_t ldy) {
  __m256 acc[C];
  float macc[C];
  for (int c = 0; c < C; ++c) {
    acc[c] = _mm256_setzero_ps();
    macc[c] = 0.0f;
  }
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = row + b * 210;
    const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
    const float d = f16(p + 208);
    __m256i iacc[C];
    for (int c = 0; c < C; ++c) iacc[c] = _mm256_setzero_si256();
    for (int n = 0; n < 2; ++n) {
      const auto* ql = reinterpret_cast<const __m256i*>(p + 64 * n);
      const __m256i l0 = _mm256_loadu_si256(ql);
      const __m256i l1 = _mm256_loadu_si256(ql + 1);
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 128 + 32 * n));
      __m256i q[4];
      q[0] =
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
      const int8_t* s = sc + 8 * n;
      __m256i sv[4];
      for (int k = 0; k < 4; ++k) sv[k] = scale_pair(s[2 * k], s[2 * k + 1]);
      for (int c = 0; c < C; ++c) {
        const int8_t* xq = x[c][b].qs + 128 * n;
        __m256i sum = iacc[c];
        for (int k = 0; k < 4; ++k) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * k));
          sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xv), sv[k]));
        }
        iacc[c] = sum;
      }
    }
    for (int c = 0; c < C; ++c) {
      const BlockQ8_K& xb = x[c][b];
      int32_t off = 0;
      for (int g = 0; g < 16; ++g) off += sc[g] * xb.bsums[g];
      const float dd = d * xb.d;
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[c]), _mm256_set1_ps(dd), acc[c]);
      macc[c] -= 32.0f * dd * static_cast<float>(off);
    }
  }
  for (int c = 0; c < C; ++c) y[c * ldy] = hsum(acc[c]) + macc[c];
}

template <template <int> class Micro>
void tile_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0, int64_t t1,
            float* y, int64_t ldy) {
  const int64_t nb = w.cols / kQKK;
  const auto* base = static_cast<const uint8_t*>(w.data);
  const int64_t xrb = q8k_row_bytes(w.cols);
  for (int64_t p0 = r0; p0 < r1; p0 += kPanel) {
    const int64_t p1 = min64(r1, p0 + kPanel);
    for (int64_t t = t0; t < t1; t += kKTokTile) {
      const int c = static_cast<int>(min64(kKTokTile, t1 - t));
      const BlockQ8_K* x[kKTokTile];
      for (int i = 0; i < c; ++i) {
        x[i] = reinterpret_cast<const BlockQ8_K*>(static_cast<const uint8_t*>(xq) + (t + i) * xrb);
      }
      for (int64_t r = p0; r < p1; ++r) {
        const uint8_t* row = base + r * w.row_bytes;
        float* yo = y + t * ldy + r;
        switch (c) {
          case 1:
            Micro<1>::run(row, x, nb, yo, ldy);
            break;
          case 2:
            Micro<2>::run(row, x, nb, yo, ldy);
            break;
          case 3:
            Micro<3>::run(row, x, nb, yo, ldy);
            break;
          default:
            Micro<4>::run(row, x, nb, yo, ldy);
            break;
        }
      }
    }
  }
}

template <int C>
struct MicroQ4K {
  static void run(const uint8_t* row, const BlockQ8_K* const* x, int64_t nb, float* y,
                  int64_t ldy) {
    micro_q4_k<C>(row, x, nb, y, ldy);
  }
};
template <int C>
struct MicroQ6K {
  static void run(const uint8_t* row, const BlockQ8_K* const* x, int64_t nb, float* y,
                  int64_t ldy) {
    micro_q6_k<C>(row, x, nb, y, ldy);
  }
};

void tile_q4_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_k<MicroQ4K>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q6_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_k<MicroQ6K>(w, xq, r0, r1, t0, t1, y, ldy);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace

const KernelSet& avx2_kernels() {
  static const KernelSet k = {tile_q4_0, tile_q4_1, tile_q8_0, tile_q4_k, tile_q6_k, dot_f32};
  return k;
}

}  // namespace spillway::ops::detail

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
