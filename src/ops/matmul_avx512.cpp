// AVX-512 VNNI kernels: quantized weight blocks x 8-bit activation blocks with vpdpbusd
// (unsigned bytes x signed bytes, four products summed into each int32 lane and
// accumulated in one instruction) and vpdpwssd (vpmaddwd and the add in one), 256 bits
// wide with AVX512VL: the 8-row groups of the AVX2 kernels (matmul_groups_avx2.h) fit
// 32-byte blocks, and Zen 4 (where these were measured) runs a 512-bit operation as two
// 256-bit halves, so zmm registers would add shuffles rather than throughput. The
// 32-element types take tiles of 8 tokens per unpacked weight block (AVX2: 4; the 32
// vector registers of AVX-512 hold the 8 tokens' accumulators); Q8_0 keeps 4, its 8 rows'
// weights and |weights| filling the registers, and the K types keep the AVX2 tiles.
//
// Each kernel computes the same integer block sums as the AVX2 kernel of its type and then
// exactly the AVX2 float arithmetic (group8 / the K-type accumulation), so its results
// equal AVX2's bit for bit; only the instructions that produce the integer sums differ.
// Compiled for AVX-512 by target attributes whatever the build flags, and called only
// after a CPU check (kernels.cpp). No standard-library templates (see matmul_avx2.cpp).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "matmul_internal.h"

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

#include "matmul_groups_avx2.h"
#include "simd_avx2.h"

namespace spillway::ops::detail {

namespace {

// ---- legacy types: unsigned 4- and 5-bit values x signed activations ----

// Row sums of 8 unpacked rows of unsigned values (Nibbles8 layout: register i holds rows i
// and i + 4) . one activation block: per register two vpdpbusd (elements 0..15, 16..31)
// leave each row's sum in four lanes of its half; two rounds of vphaddd put row r in lane
// r. Values up to 31 x 127 x 32 stay far inside int32.
inline __m256i vnni_dot8(const Nibbles8& u, const int8_t* xq) {
  const __m256i x_lo =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq)));
  const __m256i x_hi =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16)));
  __m256i s[4];
  SPW_UNROLL for (int i = 0; i < 4; ++i) {
    s[i] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u.lo[i], x_lo), u.hi[i],
                               x_hi);
  }
  return _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
}

// The same sums from a packed group (PackedNibbles8: row r in lane r throughout): each
// vpdpbusd adds 4 products per row, the low and the high nibbles in two chains.
inline __m256i vnni_packed_dot8(const PackedNibbles8& u, const int8_t* xq) {
  __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
  SPW_UNROLL for (int k = 0; k < 4; ++k) {
    a = _mm256_dpbusd_epi32(a, u.lo[k], broadcast4(xq + 4 * k));
    b = _mm256_dpbusd_epi32(b, u.hi[k], broadcast4(xq + 16 + 4 * k));
  }
  return _mm256_add_epi32(a, b);
}

// Weight block types: the blocks of matmul_groups_avx2.h (unpack, scales) with the VNNI
// dot products.
struct Q4_0V : Q4_0Blocks {
  static constexpr int kC = 8;
  static SPW_INLINE __m256i dot(const Nibbles8& u, const int8_t* xq) { return vnni_dot8(u, xq); }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return vnni_packed_dot8(u, xq);
  }
};

struct Q4_1V : Q4_1Blocks {
  static constexpr int kC = 8;
  static SPW_INLINE __m256i dot(const Nibbles8& u, const int8_t* xq) { return vnni_dot8(u, xq); }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return vnni_packed_dot8(u, xq);
  }
};

struct Q5_0V : Q5_0Blocks {
  static constexpr int kC = 8;
  static SPW_INLINE __m256i dot(const Fivebit8& u, const int8_t* xq) { return vnni_dot8(u.q, xq); }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return vnni_packed_dot8(u, xq);
  }
};

struct Q5_1V : Q5_1Blocks {
  static constexpr int kC = 8;
  static SPW_INLINE __m256i dot(const Fivebit8& u, const int8_t* xq) { return vnni_dot8(u.q, xq); }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    return vnni_packed_dot8(u, xq);
  }
};

// Q8_0: signed weights x signed activations as |w| (unsigned; -128 stays 0x80 = 128) x
// sign(x, w), |w| taken once per tile; one vpdpbusd per row and token.
struct Q8_0V {
  static constexpr int kBytes = sizeof(BlockQ8_0);
  static constexpr bool kHasMin = false;
  static constexpr int kC = 4;
  struct Rows {
    __m256i w[8], aw[8];
  };
  template <class P>
  using Unpacked = Rows;
  template <class P>
  static SPW_INLINE void unpack(const P& p, int64_t off, Unpacked<P>& u) {
    SPW_UNROLL for (int r = 0; r < 8; ++r) {
      u.w[r] = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(p[r] + off + offsetof(BlockQ8_0, qs)));
      u.aw[r] = _mm256_abs_epi8(u.w[r]);
    }
  }
  static SPW_INLINE __m256i dot(const Rows& u, const int8_t* xq) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
    __m256i s[8];
    SPW_UNROLL for (int r = 0; r < 8; ++r) {
      s[r] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u.aw[r], _mm256_sign_epi8(x, u.w[r]));
    }
    return rows8_epi32(s);
  }
  template <class P>
  static SPW_INLINE void scales(const P& p, int64_t off, const Unpacked<P>&, __m256& d, __m256&) {
    d = f16x8(p, off);
  }
};

// ---- K types: the AVX2 kernels with vpdpwssd for vpmaddwd + vpaddd ----

struct Q4KGroupsV {
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
      __m256i h[4], sm[4];  // register i: row i in the low lane, row i + 4 in the high lane
      SPW_UNROLL for (int i = 0; i < 4; ++i) {
        h[i] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(p[i + 4] + off),
                                   reinterpret_cast<const __m128i*>(p[i] + off));
        sm[i] = q4_k_scales_mins(h[i]);
      }
      __m256 d, dmin;
      head_f16_pairs8(h, d, dmin);
      const __m256i min_words =
          _mm256_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1, 8, -1, 9,
                           -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1);
      __m256i mins[4];
      SPW_UNROLL for (int i = 0; i < 4; ++i) mins[i] = _mm256_shuffle_epi8(sm[i], min_words);
      __m256i rs[C][8];  // [token][row] partial sums
      SPW_UNROLL for (int r = 0; r < 8; ++r) {
        const __m256i sc = r < 4 ? _mm256_permute2x128_si256(sm[r], sm[r], 0x00)
                                 : _mm256_permute2x128_si256(sm[r - 4], sm[r - 4], 0x11);
        const uint8_t* qs = p[r] + off + offsetof(BlockQ4_K, qs);
        __m256i iacc[C];
        SPW_UNROLL for (int c = 0; c < C; ++c) iacc[c] = _mm256_setzero_si256();
        SPW_UNROLL for (int k = 0; k < 4; ++k) {
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * k));
          const __m256i lo = _mm256_and_si256(raw, m4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
          const __m256i s_pair = _mm256_shuffle_epi8(
              sc, _mm256_setr_epi8(2 * k, -1, 2 * k, -1, 2 * k, -1, 2 * k, -1, 2 * k + 1, -1,
                                   2 * k + 1, -1, 2 * k + 1, -1, 2 * k + 1, -1, 2 * k, -1, 2 * k,
                                   -1, 2 * k, -1, 2 * k, -1, 2 * k + 1, -1, 2 * k + 1, -1,
                                   2 * k + 1, -1, 2 * k + 1, -1));
          SPW_UNROLL for (int c = 0; c < C; ++c) {
            const int8_t* xq = x[c][b].qs + 64 * k;
            const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
            const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
            const __m256i pairs =
                _mm256_hadd_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1));
            iacc[c] = _mm256_dpwssd_epi32(iacc[c], pairs, s_pair);
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

struct Q6KGroupsV {
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
        const __m256i sc = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + offsetof(BlockQ6_K, scales))));
        __m256i iacc[C];
        // q - 32: the offset against the activations' group sums, subtracted up front.
        SPW_UNROLL for (int c = 0; c < C; ++c) {
          iacc[c] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                     _mm256_slli_epi32(_mm256_madd_epi16(sc, bs[c]), 5));
        }
        SPW_UNROLL for (int n = 0; n < 2; ++n) {
          const __m256i scn = n == 0 ? _mm256_permute2x128_si256(sc, sc, 0x00)
                                     : _mm256_permute2x128_si256(sc, sc, 0x11);
          const uint8_t* ql = blk + offsetof(BlockQ6_K, ql) + 64 * n;
          const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
          const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
          const __m256i qh = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(blk + offsetof(BlockQ6_K, qh) + 32 * n));
          __m256i q[4];
          q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
          q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
          q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                 _mm256_and_si256(qh, m30));
          q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
          // The AVX2 kernel's pairing (see matmul_avx2.cpp): q[2j], q[2j + 1] combined by
          // one vphaddw, sv[j] their groups' scales.
          __m256i sv[2];
          SPW_UNROLL for (int j = 0; j < 2; ++j) {
            const int wa = 8 * j, wb = 8 * j + 4;
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
              iacc[c] = _mm256_dpwssd_epi32(iacc[c], pairs, sv[j]);
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
  tile_groups<LegacyGroups<Q4_0V>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q4_1(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q4_1V>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q5_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q5_0V>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q5_1(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q5_1V>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q8_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<LegacyGroups<Q8_0V>>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q4_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<Q4KGroupsV>(w, xq, r0, r1, t0, t1, y, ldy);
}
void tile_q6_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_groups<Q6KGroupsV>(w, xq, r0, r1, t0, t1, y, ldy);
}

}  // namespace

const MatmulKernels& avx512_matmul_kernels() {
  static const MatmulKernels k = {tile_q4_0, tile_q4_1, tile_q5_0, tile_q5_1,
                                  tile_q8_0, tile_q4_k, tile_q6_k, nullptr};
  return k;
}

}  // namespace spillway::ops::detail

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
