// AVX2 kernels (with FMA and F16C): quantized weight blocks x 8-bit activation blocks,
// integer products with vpmaddubsw / vpmaddwd, f32 accumulation per block. Compiled for
// AVX2 by target attributes whatever the build flags, and called only after a CPU check.
//
// Legacy types (Q4_0, Q4_1, Q8_0) run groups of 8 weight rows x C tokens, each weight
// block unpacked once per tile and reused for C tokens, with integer row sums per block
// (see "legacy types" below). K types (Q4_K, Q6_K) unpack one row's super-block (values
// and scales) once for C tokens.
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

#include "simd_avx2.h"

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

// ---- legacy types (Q4_0, Q4_1, Q8_0): groups of 8 weight rows ----
//
// Every product runs in groups of 8 consecutive weight rows. Per 32-element block, the
// integer dot products of the 8 rows with one activation block are reduced (with
// horizontal adds) into one int32 vector holding the 8 row sums, then converted and
// accumulated with one FMA: acc[r] += isum[r] * (d_w[r] * d_x); the min terms of Q4_0 and
// Q4_1 go to a second vector, macc[r] += m_w[r] * s_x, added at the end. A tile of C
// tokens unpacks each weight block once and repeats exactly that per-token arithmetic, so
// results do not depend on the tile shape: decode (T = 1) and prefill (T > 1) give
// bit-identical outputs. Groups at the end of a range that hold fewer than 8 rows repeat
// their last row and store only the rows that exist.

// f16 at p[r] + off for rows r = 0..7, as 8 f32 lanes.
inline __m256 f16x8(const uint8_t* const* p, int64_t off) {
  return _mm256_cvtph_ps(_mm_setr_epi16(
      static_cast<int16_t>(load_u16(p[0] + off)), static_cast<int16_t>(load_u16(p[1] + off)),
      static_cast<int16_t>(load_u16(p[2] + off)), static_cast<int16_t>(load_u16(p[3] + off)),
      static_cast<int16_t>(load_u16(p[4] + off)), static_cast<int16_t>(load_u16(p[5] + off)),
      static_cast<int16_t>(load_u16(p[6] + off)), static_cast<int16_t>(load_u16(p[7] + off))));
}

// Eight vectors of 8 int32 partial sums (one vector per row) -> row r's total in lane r.
inline __m256i rows8_epi32(const __m256i* s) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
  // a: rows 0..3 (low 16 bytes) and again rows 0..3 (high 16 bytes); b: rows 4..7.
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                          _mm256_permute2x128_si256(a, b, 0x31));
}

// Nibble blocks of 8 rows, unpacked: register i holds row i in its low 16 bytes and row
// i + 4 in its high 16 bytes; lo[i] the low nibbles (elements 0..15), hi[i] the high ones
// (16..31).
struct Nibbles8 {
  __m256i lo[4], hi[4];
};

inline void unpack_nibbles8(const uint8_t* const* p, int64_t off, Nibbles8& u) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  SPW_UNROLL for (int i = 0; i < 4; ++i) {
    const __m256i raw = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(p[i + 4] + off),
                                            reinterpret_cast<const __m128i*>(p[i] + off));
    u.lo[i] = _mm256_and_si256(raw, mask);
    u.hi[i] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
  }
}

// Row sums of the 8 unpacked nibble rows . one activation block (lane r: row r). A
// vpmaddubsw pair is at most 2 * 15 * 127 in magnitude, so 16 products (30480) still fit
// int16: two rounds of vphaddw combine the rows before one widening vpmaddwd.
inline __m256i nibble_dot8(const Nibbles8& u, const int8_t* xq) {
  const __m256i x_lo =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq)));
  const __m256i x_hi =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16)));
  __m256i s[4];
  SPW_UNROLL for (int i = 0; i < 4; ++i) {
    s[i] =
        _mm256_add_epi16(_mm256_maddubs_epi16(u.lo[i], x_lo), _mm256_maddubs_epi16(u.hi[i], x_hi));
  }
  // Low half: rows 0..3, high half: rows 4..7, two partial sums each.
  const __m256i sum16 =
      _mm256_hadd_epi16(_mm256_hadd_epi16(s[0], s[1]), _mm256_hadd_epi16(s[2], s[3]));
  return _mm256_madd_epi16(sum16, _mm256_set1_epi16(1));
}

// Weight block types. unpack() prepares the blocks at p[r] + off of 8 rows, dot() gives
// their 8 integer row sums against one activation block, scales() the 8 scales d and
// (types with a min) the 8 terms m per unit of activation sum (Q4_1: m; Q4_0: -8 d).
struct Q4_0W {
  static constexpr int kBytes = 18;
  static constexpr bool kHasMin = true;
  static constexpr int kC = 4;  // tokens per tile
  using Unpacked = Nibbles8;
  static inline void unpack(const uint8_t* const* p, int64_t off, Unpacked& u) {
    unpack_nibbles8(p, off + 2, u);
  }
  static inline __m256i dot(const Unpacked& u, const int8_t* xq) { return nibble_dot8(u, xq); }
  static inline void scales(const uint8_t* const* p, int64_t off, __m256& d, __m256& m) {
    d = f16x8(p, off);
    m = _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
  }
};

struct Q4_1W {
  static constexpr int kBytes = 20;
  static constexpr bool kHasMin = true;
  static constexpr int kC = 4;
  using Unpacked = Nibbles8;
  static inline void unpack(const uint8_t* const* p, int64_t off, Unpacked& u) {
    unpack_nibbles8(p, off + 4, u);
  }
  static inline __m256i dot(const Unpacked& u, const int8_t* xq) { return nibble_dot8(u, xq); }
  // {d, m} pairs of rows (0, 1, 4, 5) and (2, 3, 6, 7) as f32, so that the even / odd
  // lanes of the two interleave into rows 0..7 in order.
  static inline void scales(const uint8_t* const* p, int64_t off, __m256& d, __m256& m) {
    const __m256 a = _mm256_cvtph_ps(_mm_setr_epi32(
        static_cast<int>(load_u32(p[0] + off)), static_cast<int>(load_u32(p[1] + off)),
        static_cast<int>(load_u32(p[4] + off)), static_cast<int>(load_u32(p[5] + off))));
    const __m256 b = _mm256_cvtph_ps(_mm_setr_epi32(
        static_cast<int>(load_u32(p[2] + off)), static_cast<int>(load_u32(p[3] + off)),
        static_cast<int>(load_u32(p[6] + off)), static_cast<int>(load_u32(p[7] + off))));
    d = _mm256_shuffle_ps(a, b, 0x88);
    m = _mm256_shuffle_ps(a, b, 0xDD);
  }
};

struct Q8_0W {
  static constexpr int kBytes = 34;
  static constexpr bool kHasMin = false;
  static constexpr int kC = 4;
  struct Unpacked {
    const uint8_t* const* p;
    int64_t off;
  };
  static inline void unpack(const uint8_t* const* p, int64_t off, Unpacked& u) { u = {p, off + 2}; }
  // |w| x sign(w) x: vpmaddubsw pairs reach 2 * 128 * 127, so every row is widened to
  // int32 before the rows are combined. (-128 stays 0x80 = 128 as |w|.)
  static inline __m256i dot(const Unpacked& u, const int8_t* xq) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
    __m256i s[8];
    SPW_UNROLL for (int r = 0; r < 8; ++r) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u.p[r] + u.off));
      s[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)),
                               ones);
    }
    return rows8_epi32(s);
  }
  static inline void scales(const uint8_t* const* p, int64_t off, __m256& d, __m256&) {
    d = f16x8(p, off);
  }
};

// y[c * ldy + r] = row p[r] . token c for r < n_rows (<= 8) and C tokens. When `pf` is set
// (matrix-vector products), the next group of 8 rows (8 * kBytes per block, contiguous)
// is prefetched meanwhile: at T = 1 weights stream from memory once per token, and the
// hardware prefetcher alone does not keep up with 8 interleaved row streams.
template <class W, int C>
inline void group8(const uint8_t* const* p, const Q8ARow* x, int64_t nb, float* y, int64_t ldy,
                   int n_rows, const uint8_t* pf) {
  constexpr int kStep = 8 * W::kBytes;
  __m256 acc[C], macc[C];
  SPW_UNROLL for (int c = 0; c < C; ++c) acc[c] = macc[c] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if (pf != nullptr) {
      SPW_UNROLL for (int i = 0; i < kStep; i += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(pf + b * kStep + i), _MM_HINT_T0);
      }
    }
    const int64_t off = b * W::kBytes;
    typename W::Unpacked u;
    W::unpack(p, off, u);
    __m256 d, m = _mm256_setzero_ps();
    W::scales(p, off, d, m);
    SPW_UNROLL for (int c = 0; c < C; ++c) {
      const __m256i isum = W::dot(u, x[c].qs + b * kQK);
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
                               _mm256_mul_ps(d, _mm256_broadcast_ss(x[c].d + b)), acc[c]);
      if constexpr (W::kHasMin) {
        macc[c] = _mm256_fmadd_ps(m, _mm256_broadcast_ss(x[c].s + b), macc[c]);
      }
    }
  }
  SPW_UNROLL for (int c = 0; c < C; ++c) {
    const __m256 v = W::kHasMin ? _mm256_add_ps(acc[c], macc[c]) : acc[c];
    if (n_rows == 8) {
      _mm256_storeu_ps(y + c * ldy, v);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, v);
      for (int r = 0; r < n_rows; ++r) y[c * ldy + r] = tmp[r];
    }
  }
}

constexpr int64_t kPanel = 64;  // weight rows kept hot in cache while tokens stream by

template <class W>
void tile_legacy(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
                 int64_t t1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / kQK;
  const auto* base = static_cast<const uint8_t*>(w.data);
  const uint64_t rb = w.row_bytes;
  const bool stream = t1 - t0 == 1;  // matrix-vector: prefetch the next group
  for (int64_t p0 = r0; p0 < r1; p0 += kPanel) {
    const int64_t p1 = min64(r1, p0 + kPanel);
    for (int64_t t = t0; t < t1; t += W::kC) {
      const int c = static_cast<int>(min64(W::kC, t1 - t));
      Q8ARow x[W::kC];
      for (int i = 0; i < c; ++i) x[i] = q8a_row(xq, w.cols, t + i);
      for (int64_t r = p0; r < p1; r += 8) {
        const int n = static_cast<int>(min64(8, p1 - r));
        const uint8_t* p[8];
        for (int i = 0; i < 8; ++i) p[i] = base + (r + (i < n ? i : n - 1)) * rb;
        const uint8_t* pf = stream && r + 16 <= r1 ? p[0] + 8 * rb : nullptr;
        float* yo = y + t * ldy + r;
        switch (c) {
          case 1:
            group8<W, 1>(p, x, nb, yo, ldy, n, pf);
            break;
          case 2:
            group8<W, 2>(p, x, nb, yo, ldy, n, nullptr);
            break;
          case 3:
            group8<W, 3>(p, x, nb, yo, ldy, n, nullptr);
            break;
          default:
            group8<W, 4>(p, x, nb, yo, ldy, n, nullptr);
            break;
        }
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
    const uint8_t* p = row + b * sizeof(BlockQ4_K);
    const float d = f16(p), dmin = f16(p + 2);
    int sc[8], mn[8];
    for (int j = 0; j < 8; ++j) q4_k_scale_min(p + 4, j, sc[j], mn[j]);
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
    const uint8_t* p = row + b * sizeof(BlockQ6_K);
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
