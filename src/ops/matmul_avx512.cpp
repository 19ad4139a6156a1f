// AVX-512 VNNI kernels: quantized weight blocks x 8-bit activation blocks with vpdpbusd
// (unsigned bytes x signed bytes, four products summed into each int32 lane and
// accumulated in one instruction) and vpdpwssd (vpmaddwd and the add in one), 256 bits
// wide with AVX512VL: the 8-row group kernels of matmul_groups.h, instantiated here with
// this family's integer products (VnniDots), fit 32-byte blocks, and Zen 4 (where these
// were measured) runs a 512-bit operation as two 256-bit halves, so zmm registers would
// add shuffles rather than throughput. The 32-element types take tiles of 8 tokens per
// unpacked weight block (AVX2: 4; the 32 vector registers of AVX-512 hold the 8 tokens'
// accumulators); Q8_0 keeps 4, its 8 rows' weights and |weights| filling the registers,
// and the K types keep the AVX2 tiles.
//
// Each kernel computes the same integer block sums as the AVX2 kernel of its type and then
// exactly the AVX2 float arithmetic (the same templates), so its results equal AVX2's bit
// for bit; only the instructions that produce the integer sums differ. Compiled for
// AVX-512 by target attributes whatever the build flags, and called only after a CPU
// check (kernels.cpp). No standard-library templates (see matmul_avx2.cpp).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "matmul_internal.h"

#include "target_avx512_begin.h"

#include "matmul_groups.h"
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

// The AVX-512 VNNI family's integer products (the trait D of matmul_groups.h): vpdpbusd
// for the 4- and 5-bit values alike, vpdpwssd for vpmaddwd + vpaddd.
struct VnniDots {
  static constexpr int kLegacyTile = 8;
  static SPW_INLINE __m256i nibbles(const Nibbles8& u, const int8_t* xq) {
    return vnni_dot8(u, xq);
  }
  static SPW_INLINE __m256i fivebit(const Nibbles8& u, const int8_t* xq) {
    return vnni_dot8(u, xq);
  }
  static SPW_INLINE __m256i packed_nibbles(const PackedNibbles8& u, const int8_t* xq) {
    return vnni_packed_dot8(u, xq);
  }
  static SPW_INLINE __m256i packed_fivebit(const PackedNibbles8& u, const int8_t* xq) {
    return vnni_packed_dot8(u, xq);
  }
  static SPW_INLINE __m256i madd_acc(__m256i acc, __m256i a, __m256i b) {
    return _mm256_dpwssd_epi32(acc, a, b);
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

}  // namespace

const MatmulKernels& avx512_matmul_kernels() {
  static const MatmulKernels k = group_matmul_kernels<VnniDots, Q8_0V>();
  return k;
}

}  // namespace spillway::ops::detail

#include "target_end.h"
