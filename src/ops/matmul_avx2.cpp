// AVX2 kernels (with FMA and F16C): quantized weight blocks x 8-bit activation blocks,
// integer products with vpmaddubsw / vpmaddwd, f32 accumulation per block. Compiled for
// AVX2 by target attributes whatever the build flags, and called only after a CPU check.
//
// Every type runs groups of 8 weight rows x C tokens, each weight block unpacked once per
// tile and reused for C tokens, with the 8 rows' integer sums per block reduced into one
// vector (see "legacy types" and "K types" below).
//
// Everything here sits in an anonymous namespace and uses no standard-library templates:
// code compiled for AVX2 must not leak into inline functions shared with other files.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "matmul_internal.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include "matmul_groups_avx2.h"
#include "simd_avx2.h"

namespace spillway::ops::detail {

namespace {

// ---- legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): groups of 8 weight rows ----
//
// Every product runs in groups of 8 consecutive weight rows. Per 32-element block, the
// integer dot products of the 8 rows with one activation block are reduced (with
// horizontal adds) into one int32 vector holding the 8 row sums, then converted and
// accumulated with one FMA: acc[r] += isum[r] * (d_w[r] * d_x); the min terms of the
// 4- and 5-bit types go to a second vector, macc[r] += m_w[r] * s_x, added at the end. A
// tile of C tokens unpacks each weight block once and repeats exactly that per-token
// arithmetic, so results do not depend on the tile shape: decode (T = 1) and prefill
// (T > 1) give bit-identical outputs. Groups at the end of a range that hold fewer than 8 rows
// repeat their last row and store only the rows that exist.

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

// The same sums from a packed group (PackedNibbles8: row r in lane r throughout). Each
// vpmaddubsw lane is at most 2 * 15 * 127, so the 8 of a block (30480) add up in int16
// before one widening vpmaddwd.
inline __m256i packed_nibble_dot8(const PackedNibbles8& u, const int8_t* xq) {
  __m256i s = _mm256_setzero_si256();
  SPW_UNROLL for (int k = 0; k < 4; ++k) {
    s = _mm256_add_epi16(
        s, _mm256_add_epi16(_mm256_maddubs_epi16(u.lo[k], broadcast4(xq + 4 * k)),
                            _mm256_maddubs_epi16(u.hi[k], broadcast4(xq + 16 + 4 * k))));
  }
  return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

// The same sums for 5-bit values from a packed group (row r in lane r). A vpmaddubsw lane
// reaches 2 * 31 * 127 = 7874, so the int16 sums are widened after 4 products per lane
// (31496), twice per block.
inline __m256i packed_fivebit_dot8(const PackedNibbles8& u, const int8_t* xq) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s[2];
  SPW_UNROLL for (int h = 0; h < 2; ++h) {
    s[h] = _mm256_setzero_si256();
    SPW_UNROLL for (int k = 2 * h; k < 2 * h + 2; ++k) {
      s[h] = _mm256_add_epi16(
          s[h], _mm256_add_epi16(_mm256_maddubs_epi16(u.lo[k], broadcast4(xq + 4 * k)),
                                 _mm256_maddubs_epi16(u.hi[k], broadcast4(xq + 16 + 4 * k))));
    }
  }
  return _mm256_add_epi32(_mm256_madd_epi16(s[0], ones), _mm256_madd_epi16(s[1], ones));
}

// Weight block types: the blocks of matmul_groups_avx2.h (unpack, scales) with dot(), their
// 8 integer row sums against one activation block.
struct Q4_0W : Q4_0Blocks {
  static constexpr int kC = 4;
  static SPW_INLINE __m256i dot(const Nibbles8& u, const int8_t* xq) { return nibble_dot8(u, xq); }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return packed_nibble_dot8(u, xq);
  }
};

struct Q4_1W : Q4_1Blocks {
  static constexpr int kC = 4;
  static SPW_INLINE __m256i dot(const Nibbles8& u, const int8_t* xq) { return nibble_dot8(u, xq); }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return packed_nibble_dot8(u, xq);
  }
};

// Row sums of 8 unpacked 5-bit rows . one activation block. A vpmaddubsw pair reaches
// 2 * 31 * 127, so 8 products (31496) still fit int16 but 16 do not: one round of vphaddw,
// then vpmaddwd widens before the last round of horizontal adds.
inline __m256i fivebit_dot8(const Nibbles8& u, const int8_t* xq) {
  const __m256i x_lo =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq)));
  const __m256i x_hi =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16)));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s[4];
  SPW_UNROLL for (int i = 0; i < 4; ++i) {
    s[i] =
        _mm256_add_epi16(_mm256_maddubs_epi16(u.lo[i], x_lo), _mm256_maddubs_epi16(u.hi[i], x_hi));
  }
  const __m256i a = _mm256_madd_epi16(_mm256_hadd_epi16(s[0], s[1]), ones);
  const __m256i b = _mm256_madd_epi16(_mm256_hadd_epi16(s[2], s[3]), ones);
  // Low half: rows 0..3, high half: rows 4..7.
  return _mm256_hadd_epi32(a, b);
}

// Q5_0: {f16 d, qh[4], qs[16]}.
struct Q5_0W : Q5_0Blocks {
  static constexpr int kC = 4;
  static SPW_INLINE __m256i dot(const Fivebit8& u, const int8_t* xq) {
    return fivebit_dot8(u.q, xq);
  }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return packed_fivebit_dot8(u, xq);
  }
};

// Q5_1: {f16 d, f16 m, qh[4], qs[16]}.
struct Q5_1W : Q5_1Blocks {
  static constexpr int kC = 4;
  static SPW_INLINE __m256i dot(const Fivebit8& u, const int8_t* xq) {
    return fivebit_dot8(u.q, xq);
  }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return packed_fivebit_dot8(u, xq);
  }
};

struct Q8_0W {
  static constexpr int kBytes = sizeof(BlockQ8_0);
  static constexpr bool kHasMin = false;
  static constexpr int kC = 4;
  template <class P>
  struct Unpacked {  // where the 8 rows' quants are (read in dot(), per token)
    P p;
    int64_t off;
  };
  template <class P>
  static SPW_INLINE void unpack(const P& p, int64_t off, Unpacked<P>& u) {
    u = {p, off + 2};
  }
  // |w| x sign(w) x: vpmaddubsw pairs reach 2 * 128 * 127, so every row is widened to
  // int32 before the rows are combined. (-128 stays 0x80 = 128 as |w|.)
  template <class P>
  static SPW_INLINE __m256i dot(const Unpacked<P>& u, const int8_t* xq) {
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
  template <class P>
  static SPW_INLINE void scales(const P& p, int64_t off, const Unpacked<P>&, __m256& d, __m256&) {
    d = f16x8(p, off);
  }
};

// ---- K types (Q4_K, Q6_K): groups of 8 weight rows ----
//
// Per 256-element super-block, each of the 8 rows' integer dot products with one Q8_K
// activation block, sub-block scales applied in integer arithmetic (vpmaddwd), is one
// vector of 8 int32 partial sums; the 8 rows' vectors are reduced with horizontal adds
// into one vector of 8 row sums, converted and accumulated with one FMA:
// acc[r] += isum[r] * (d_w[r] * d_x). The sub-block mins of Q4_K (against the
// activations' 16-element sums) are summed the same way, 8 rows at once, into a second
// vector subtracted at the end; Q6_K's offset of -32 is folded into the integer sums. A
// tile of C tokens reads each row's super-block once and repeats exactly the per-token
// arithmetic, so, as for the legacy types, a token's outputs do not depend on the tile
// shape, the row range or the thread count.

struct Q4KGroups {
  static constexpr int kBytes = sizeof(BlockQ4_K);
  static constexpr int kElems = kQKK;
  static constexpr int kC = 4;
  using X = const BlockQ8_K*;
  static X x_row(const void* xq, int64_t cols, int64_t t) {
    return reinterpret_cast<X>(static_cast<const uint8_t*>(xq) + t * q8k_row_bytes(cols));
  }
  template <int C>
  static void run(const uint8_t* const* p, int64_t bs, const X* x, int64_t nb, float* y,
                  int64_t ldy, int n_rows, const uint8_t* pf) {
    constexpr int kStep = 8 * kBytes;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[C], macc[C];
    SPW_UNROLL for (int c = 0; c < C; ++c) acc[c] = macc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      if (pf != nullptr) prefetch_step<kStep>(pf + b * kStep);
      const int64_t off = b * bs;
      // Register i: row i in the low lane, row i + 4 in the high lane.
      __m256i h[4], sm[4];
      SPW_UNROLL for (int i = 0; i < 4; ++i) {
        h[i] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(p[i + 4] + off),
                                   reinterpret_cast<const __m128i*>(p[i] + off));
        sm[i] = q4_k_scales_mins(h[i]);
      }
      __m256 d, dmin;
      head_f16_pairs8(h, d, dmin);
      // Mins as int16 (words 0..7 of each lane) . sub-block sums of the activations.
      const __m256i min_words =
          _mm256_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1, 8, -1, 9,
                           -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1);
      __m256i mins[4];
      SPW_UNROLL for (int i = 0; i < 4; ++i) mins[i] = _mm256_shuffle_epi8(sm[i], min_words);
      __m256i rs[C][8];  // [token][row] partial sums
      SPW_UNROLL for (int r = 0; r < 8; ++r) {
        const __m256i sc = r < 4 ? _mm256_permute2x128_si256(sm[r], sm[r], 0x00)
                                 : _mm256_permute2x128_si256(sm[r - 4], sm[r - 4], 0x11);
        const uint8_t* qs = p[r] + off + 16;
        __m256i iacc[C];
        SPW_UNROLL for (int c = 0; c < C; ++c) iacc[c] = _mm256_setzero_si256();
        SPW_UNROLL for (int k = 0; k < 4; ++k) {
          // 32 bytes: sub-block 2k in the low nibbles, 2k + 1 in the high ones.
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * k));
          const __m256i lo = _mm256_and_si256(raw, m4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
          // Words 0..3 of each lane: scale of sub-block 2k; words 4..7: of 2k + 1.
          const __m256i s_pair = _mm256_shuffle_epi8(
              sc, _mm256_setr_epi8(2 * k, -1, 2 * k, -1, 2 * k, -1, 2 * k, -1, 2 * k + 1, -1,
                                   2 * k + 1, -1, 2 * k + 1, -1, 2 * k + 1, -1, 2 * k, -1, 2 * k,
                                   -1, 2 * k, -1, 2 * k, -1, 2 * k + 1, -1, 2 * k + 1, -1,
                                   2 * k + 1, -1, 2 * k + 1, -1));
          SPW_UNROLL for (int c = 0; c < C; ++c) {
            const int8_t* xq = x[c][b].qs + 64 * k;
            const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
            const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
            // vpmaddubsw pairs reach 2 * 15 * 127: two of them still fit int16.
            const __m256i pairs =
                _mm256_hadd_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1));
            iacc[c] = _mm256_add_epi32(iacc[c], _mm256_madd_epi16(pairs, s_pair));
          }
        }
        SPW_UNROLL for (int c = 0; c < C; ++c) rs[c][r] = iacc[c];
      }
      SPW_UNROLL for (int c = 0; c < C; ++c) {
        const BlockQ8_K& xb = x[c][b];
        const __m256i bs = bsums32(xb);
        const __m256i msum = _mm256_hadd_epi32(
            _mm256_hadd_epi32(_mm256_madd_epi16(mins[0], bs), _mm256_madd_epi16(mins[1], bs)),
            _mm256_hadd_epi32(_mm256_madd_epi16(mins[2], bs), _mm256_madd_epi16(mins[3], bs)));
        const __m256 dx = _mm256_set1_ps(xb.d);
        acc[c] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows8_epi32(rs[c])), _mm256_mul_ps(d, dx), acc[c]);
        macc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, dx), macc[c]);
      }
    }
    SPW_UNROLL for (int c = 0; c < C; ++c) {
      store_rows8(_mm256_sub_ps(acc[c], macc[c]), y + c * ldy, n_rows);
    }
  }
};

struct Q6KGroups {
  static constexpr int kBytes = sizeof(BlockQ6_K);
  static constexpr int kElems = kQKK;
  static constexpr int kC = 4;
  using X = const BlockQ8_K*;
  static X x_row(const void* xq, int64_t cols, int64_t t) {
    return reinterpret_cast<X>(static_cast<const uint8_t*>(xq) + t * q8k_row_bytes(cols));
  }
  template <int C>
  static void run(const uint8_t* const* p, int64_t bs, const X* x, int64_t nb, float* y,
                  int64_t ldy, int n_rows, const uint8_t* pf) {
    constexpr int kStep = 8 * kBytes;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    __m256 acc[C];
    SPW_UNROLL for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      if (pf != nullptr) prefetch_step<kStep>(pf + b * kStep);
      const int64_t off = b * bs;
      const __m256 d = f16x8(p, off + offsetof(BlockQ6_K, d));
      __m256i bs[C];  // the activations' 16 sums of 16
      SPW_UNROLL for (int c = 0; c < C; ++c) {
        bs[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[c][b].bsums));
      }
      __m256i rs[C][8];  // [token][row] partial sums
      SPW_UNROLL for (int r = 0; r < 8; ++r) {
        const uint8_t* blk = p[r] + off;
        // Scales as int16: groups 0..7 in the low lane, 8..15 in the high lane.
        const __m256i sc = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + offsetof(BlockQ6_K, scales))));
        __m256i iacc[C];
        // q - 32: the offset against the activations' group sums, subtracted up front.
        SPW_UNROLL for (int c = 0; c < C; ++c) {
          iacc[c] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                     _mm256_slli_epi32(_mm256_madd_epi16(sc, bs[c]), 5));
        }
        SPW_UNROLL for (int n = 0; n < 2; ++n) {
          // Half n: elements 128 n + 32 k + l, k = 0..3, l = 0..31; lane 0 holds group
          // 8 n + 2 k, lane 1 group 8 n + 2 k + 1.
          const __m256i scn = n == 0 ? _mm256_permute2x128_si256(sc, sc, 0x00)
                                     : _mm256_permute2x128_si256(sc, sc, 0x11);
          const uint8_t* ql = blk + 64 * n;
          const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
          const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
          const __m256i qh =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
          __m256i q[4];
          q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
          q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
          q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                 _mm256_and_si256(qh, m30));
          q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
          // Pairs of vpmaddubsw results (each word at most 2 * 63 * 127) are combined with
          // one vphaddw (two words still fit int16): for q[2j] and q[2j + 1], words 0..3 of
          // lane 0 belong to group 8n + 4j, words 4..7 to 8n + 4j + 2; lane 1 to the next
          // groups (+1). sv[j] holds those groups' scales.
          __m256i sv[2];
          SPW_UNROLL for (int j = 0; j < 2; ++j) {
            const int wa = 8 * j, wb = 8 * j + 4;  // bytes of words 4j, 4j + 2
            sv[j] = _mm256_shuffle_epi8(
                scn, _mm256_setr_epi8(wa, wa + 1, wa, wa + 1, wa, wa + 1, wa, wa + 1, wb, wb + 1,
                                      wb, wb + 1, wb, wb + 1, wb, wb + 1, wa + 2, wa + 3, wa + 2,
                                      wa + 3, wa + 2, wa + 3, wa + 2, wa + 3, wb + 2, wb + 3,
                                      wb + 2, wb + 3, wb + 2, wb + 3, wb + 2, wb + 3));
          }
          SPW_UNROLL for (int c = 0; c < C; ++c) {
            const int8_t* xq = x[c][b].qs + 128 * n;
            SPW_UNROLL for (int j = 0; j < 2; ++j) {
              const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * j));
              const __m256i x1 =
                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * j + 32));
              const __m256i pairs = _mm256_hadd_epi16(_mm256_maddubs_epi16(q[2 * j], x0),
                                                      _mm256_maddubs_epi16(q[2 * j + 1], x1));
              iacc[c] = _mm256_add_epi32(iacc[c], _mm256_madd_epi16(pairs, sv[j]));
            }
          }
        }
        SPW_UNROLL for (int c = 0; c < C; ++c) rs[c][r] = iacc[c];
      }
      SPW_UNROLL for (int c = 0; c < C; ++c) {
        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows8_epi32(rs[c])),
                                 _mm256_mul_ps(d, _mm256_set1_ps(x[c][b].d)), acc[c]);
      }
    }
    SPW_UNROLL for (int c = 0; c < C; ++c) store_rows8(acc[c], y + c * ldy, n_rows);
  }
};

void tile_q4_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q4_0W>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q4_1(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q4_1W>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q5_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q5_0W>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q5_1(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q5_1W>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q8_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q8_0W>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q4_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<Q4KGroups>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q6_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<Q6KGroups>(w, xq, r0, r1, t0, t1, y, ldy);
}

// QuantizeFn (matmul_internal.h): the scalar reference's arithmetic, 8 lanes at a time,
// to the same bytes. max(|x|, acc) keeps acc where |x| is NaN (vmaxps returns its second
// operand then), as std::max(amax, |x|) does; x * id is the same product; NaN products are
// zeroed before the clamp, and vroundps to nearest-even is nearbyint under the default
// rounding mode. The block's 4 x 8 int32 are packed to bytes and put back in order.
void quantize_q8a(const float* x, int64_t cols, std::byte* out) {
  const int64_t nb = cols / kQK;
  auto* qs = reinterpret_cast<int8_t*>(out);
  auto* ds = reinterpret_cast<float*>(out + nb * 32);
  auto* ss = reinterpret_cast<float*>(out + nb * 36);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kQK;
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    SPW_UNROLL for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m);
    }
    const float amax = hmax(m);
    const float d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    __m256i sum = _mm256_setzero_si256();
    SPW_UNROLL for (int i = 0; i < 4; ++i) {
      __m256 p = _mm256_mul_ps(v[i], vid);
      p = _mm256_and_ps(p, _mm256_cmp_ps(p, p, _CMP_ORD_Q));
      p = _mm256_min_ps(_mm256_max_ps(p, lo), hi);
      q[i] = _mm256_cvtps_epi32(_mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      sum = _mm256_add_epi32(sum, q[i]);
    }
    // Per 128-bit lane: q0 q1 q2 q3's low (lane 0) / high (lane 1) four values.
    const __m256i bytes =
        _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * kQK),
                        _mm256_permutevar8x32_epi32(bytes, order));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    ds[b] = d;
    ss[b] = d * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
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

const MatmulKernels& avx2_matmul_kernels() {
  static const MatmulKernels k = {tile_q4_0, tile_q4_1, tile_q5_0, tile_q5_1,   tile_q8_0,
                                  tile_q4_k, tile_q6_k, dot_f32,   quantize_q8a};
  return k;
}

}  // namespace spillway::ops::detail

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
