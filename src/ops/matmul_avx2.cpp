// AVX2 kernels (with FMA and F16C): quantized weight blocks x 8-bit activation blocks,
// integer products with vpmaddubsw / vpmaddwd, f32 accumulation per block. Compiled for
// AVX2 by target attributes whatever the build flags, and called only after a CPU check.
//
// Every type runs groups of 8 weight rows x C tokens, each weight block unpacked once per
// tile and reused for C tokens, with the 8 rows' integer sums per block reduced into one
// vector (see "legacy types" below and the K types in matmul_groups.h). The group kernels
// are matmul_groups.h's, instantiated here with this family's integer products (Avx2Dots).
//
// Everything here sits in an anonymous namespace and uses no standard-library templates:
// code compiled for AVX2 must not leak into inline functions shared with other files.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "matmul_internal.h"

#include "target_avx2_begin.h"

#include "matmul_groups.h"
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

// The AVX2 family's integer products (the trait D of matmul_groups.h).
struct Avx2Dots {
  static constexpr int kLegacyTile = 4;
  static SPW_INLINE __m256i nibbles(const Nibbles8& u, const int8_t* xq) {
    return nibble_dot8(u, xq);
  }
  static SPW_INLINE __m256i fivebit(const Nibbles8& u, const int8_t* xq) {
    return fivebit_dot8(u, xq);
  }
  static SPW_INLINE __m256i packed_nibbles(const PackedNibbles8& u, const int8_t* xq) {
    return packed_nibble_dot8(u, xq);
  }
  static SPW_INLINE __m256i packed_fivebit(const PackedNibbles8& u, const int8_t* xq) {
    return packed_fivebit_dot8(u, xq);
  }
  // vpmaddwd + vpaddd.
  static SPW_INLINE __m256i madd_acc(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
  }
};

// Q8_0 (read per token, not unpacked): its own block type.
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

// QuantizeFn for Q8_K (matmul_internal.h), as quantize_q8a computes each value: the
// block's amax over 32 vectors, then per 32 values four vectors of q, packed to bytes in
// order, and the two 16-value group sums of bsums.
void quantize_q8k(const float* x, int64_t cols, std::byte* out) {
  const int64_t nb = cols / kQKK;
  auto* blocks = reinterpret_cast<BlockQ8_K*>(out);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kQKK;
    BlockQ8_K& blk = blocks[b];
    __m256 m = _mm256_setzero_ps();
    SPW_UNROLL for (int i = 0; i < kQKK / 8; ++i) {
      m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * i)), m);
    }
    const float amax = hmax(m);
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    blk.d = amax / 127.0f;
    const __m256 vid = _mm256_set1_ps(id);
    for (int c = 0; c < kQKK / 32; ++c) {
      __m256i q[4];
      SPW_UNROLL for (int i = 0; i < 4; ++i) {
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(xb + 32 * c + 8 * i), vid);
        p = _mm256_and_ps(p, _mm256_cmp_ps(p, p, _CMP_ORD_Q));
        p = _mm256_min_ps(_mm256_max_ps(p, lo), hi);
        q[i] =
            _mm256_cvtps_epi32(_mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
      const __m256i bytes =
          _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk.qs + 32 * c),
                          _mm256_permutevar8x32_epi32(bytes, order));
      // Group sums: q0 + q1 (values 0..15 of these 32), q2 + q3 (16..31), each to one int.
      const __m256i s01 = _mm256_add_epi32(q[0], q[1]), s23 = _mm256_add_epi32(q[2], q[3]);
      // hadd of (s01, s23) per lane, twice: lane 0 holds [s01 s01 s23 s23] partials of the
      // low halves, lane 1 of the high halves.
      __m256i h = _mm256_hadd_epi32(s01, s23);
      h = _mm256_hadd_epi32(h, h);
      const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
      blk.bsums[2 * c] = static_cast<int16_t>(_mm_cvtsi128_si32(t));
      blk.bsums[2 * c + 1] = static_cast<int16_t>(_mm_extract_epi32(t, 1));
    }
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
  static const MatmulKernels k = [] {
    MatmulKernels t = group_matmul_kernels<Avx2Dots, Q8_0W>();
    t.dot_f32 = dot_f32;
    t.quantize_q8a = quantize_q8a;
    t.quantize_q8k = quantize_q8k;
    return t;
  }();
  return k;
}

}  // namespace spillway::ops::detail

#include "target_end.h"
