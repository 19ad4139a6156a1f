// The 8-row group matmul kernels, written once for the families that run them with 256-bit
// vectors (AVX2, and AVX-512 VNNI through AVX512VL): block loads of 8 rows (GGUF's rows
// and the packed groups of WeightLayout::kRows8), the 32-element types' unpacking and
// scales, the K types' kernels, row reductions, stores and the tile driver tile_groups.
// What differs between the families is a trait D of integer dot products (matmul_avx2.cpp:
// Avx2Dots; matmul_avx512.cpp: VnniDots) with:
//   kLegacyTile                       tokens per unpacked block of the 32-element types
//   nibbles(Nibbles8, xq)             8 row sums of unsigned 4-bit rows . 32 activations
//   fivebit(Nibbles8, xq)             the same for 5-bit values
//   packed_nibbles(PackedNibbles8, xq), packed_fivebit(PackedNibbles8, xq)
//                                     the same from a packed group (row r in lane r)
//   madd_acc(acc, a, b)               acc + the int16 pairwise products of a and b, int32
// group_matmul_kernels<D, Q8>() is a family's table of tile kernels (Q8: its Q8_0 block
// type, whose algorithm differs). Every instantiation computes the same integer sums and
// the same float arithmetic, so the families' outputs are equal bit for bit.
//
// Internal linkage: include only after the family file's target pragma (or clang's
// attribute push), and after matmul_internal.h, so that each family compiles its own copy
// for its instruction set.
#pragma once

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

// The 8 rows of a group as the group kernels address them: p[i] is row i's block 0, and
// a row's blocks lie kStride bytes apart (0: the distance is passed at run time).
// RowPointers holds 8 pointers (GGUF's row order, and groups at the end of a range);
// InterleavedRows is a full group of WeightLayout::kRows8, one pointer with the rows at
// constant offsets, so that a kernel keeps one address register for its weights instead of
// eight (and spills none: 8 row pointers, 8 activation rows and the loop state outnumber
// the 16 general registers).
struct RowPointers {
  static constexpr int64_t kStride = 0;
  const uint8_t* const* rows;
  const uint8_t* operator[](int i) const { return rows[i]; }
};
template <int kBytes>
struct InterleavedRows {
  static constexpr int64_t kStride = 8 * kBytes;
  const uint8_t* base;
  const uint8_t* operator[](int i) const { return base + i * kBytes; }
};

// f16 at p[r] + off for rows r = 0..7, as 8 f32 lanes.
template <class P>
SPW_INLINE __m256 f16x8(const P& p, int64_t off) {
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

template <class P>
SPW_INLINE void unpack_nibbles8(const P& p, int64_t off, Nibbles8& u) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  SPW_UNROLL for (int i = 0; i < 4; ++i) {
    const __m256i raw = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(p[i + 4] + off),
                                            reinterpret_cast<const __m128i*>(p[i] + off));
    u.lo[i] = _mm256_and_si256(raw, mask);
    u.hi[i] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
  }
}

// Nibble blocks of a packed group of 8 rows (packs_nibbles in matmul_internal.h),
// unpacked: lane r of lo[k] holds elements 4k..4k+3 of row r, lane r of hi[k] elements
// 16 + 4k..16 + 4k + 3. Against 4 activation bytes broadcast to every lane, one product of
// a register leaves each row's partial sum in the row's own lane: no horizontal adds.
struct PackedNibbles8 {
  __m256i lo[4], hi[4];
};

// The nibbles of the packed group block at g, whose 4 pieces start at byte kQs.
template <int kQs>
SPW_INLINE void unpack_packed_nibbles8(const uint8_t* g, PackedNibbles8& u) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  SPW_UNROLL for (int k = 0; k < 4; ++k) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + kQs + 32 * k));
    u.lo[k] = _mm256_and_si256(raw, mask);
    u.hi[k] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
  }
}

// The 5-bit values of the packed group block at g: the nibbles (pieces at byte kQs) with
// bit 4 from the 8 rows' qh words at byte kQh (row r's in lane r). Value 4k + j of a row
// (byte j of lo[k]) takes bit 4k + j of its qh, value 16 + 4k + j (byte j of hi[k]) bit
// 16 + 4k + j: a byte shuffle copies the qh byte holding those 4 bits into the lane's 4
// bytes, and byte j tests its own bit.
template <int kQh, int kQs>
SPW_INLINE void unpack_packed_fivebit8(const uint8_t* g, PackedNibbles8& u) {
  unpack_packed_nibbles8<kQs>(g, u);
  const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + kQh));
  const __m256i b4 = _mm256_set1_epi8(0x10);
  SPW_UNROLL for (int k = 0; k < 4; ++k) {
    const int h = k % 2;
    const __m256i bits = _mm256_set1_epi32(static_cast<int>(0x08040201u << (4 * h)));
    SPW_UNROLL for (int half = 0; half < 2; ++half) {
      const char m = static_cast<char>(2 * half + k / 2);  // the qh byte
      const __m256i pick =
          _mm256_setr_epi8(m, m, m, m, m + 4, m + 4, m + 4, m + 4, m + 8, m + 8, m + 8, m + 8,
                           m + 12, m + 12, m + 12, m + 12, m, m, m, m, m + 4, m + 4, m + 4, m + 4,
                           m + 8, m + 8, m + 8, m + 8, m + 12, m + 12, m + 12, m + 12);
      const __m256i set =
          _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(qh, pick), bits), bits);
      __m256i& v = half == 0 ? u.lo[k] : u.hi[k];
      v = _mm256_or_si256(v, _mm256_and_si256(set, b4));
    }
  }
}

// The 8 f16 at g (rows 0..7 of a packed group's field) as f32.
SPW_INLINE __m256 packed_f16x8(const uint8_t* g) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
}

// The 4 activation bytes at xq in every 32-bit lane.
SPW_INLINE __m256i broadcast4(const int8_t* xq) {
  return _mm256_set1_epi32(static_cast<int>(load_u32(reinterpret_cast<const uint8_t*>(xq))));
}

// Type T when kIf, else F (no standard-library templates in the kernel files).
template <bool kIf, class T, class F>
struct Pick {
  using type = T;
};
template <class T, class F>
struct Pick<false, T, F> {
  using type = F;
};

// The f16 at byte 0 of the 8 block heads (register i: rows i and i + 4), rows 0..7 as f32.
SPW_INLINE __m256 head_f16x8(const __m256i* h) {
  const __m256i a = _mm256_unpacklo_epi16(h[0], h[1]);  // lane: words d_i, d_i+1, ...
  const __m256i b = _mm256_unpacklo_epi16(h[2], h[3]);
  const __m256i c = _mm256_unpacklo_epi32(a, b);  // d0..d3 in qword 0, d4..d7 in qword 2
  return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(c, 0x08)));
}

// The f16 pairs {d, m} at byte 0 of the 8 block heads, rows 0..7 as f32.
SPW_INLINE void head_f16_pairs8(const __m256i* h, __m256& d, __m256& m) {
  const __m256i a = _mm256_unpacklo_epi32(h[0], h[1]);  // lane: {d,m}_i, {d,m}_i+1, ...
  const __m256i b = _mm256_unpacklo_epi32(h[2], h[3]);
  const __m256i c = _mm256_unpacklo_epi64(a, b);  // lane: {d,m} of rows 0..3 (4..7)
  const __m256i sep = _mm256_shuffle_epi8(
      c, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9,
                          12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
  const __m256i dm = _mm256_permute4x64_epi64(sep, 0xD8);  // d0..d7 | m0..m7
  d = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
  m = _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1));
}

// 5-bit blocks: the nibbles as for Q4_0/Q4_1, plus bit 4 of element j in bit j of the
// little-endian 32-bit word qh. Register i of the unpacked rows holds row i in its low lane
// and row i + 4 in its high lane (as Nibbles8), and so do the blocks' first 16 bytes,
// loaded once: their f16 fields give the scales, their qh bytes the high bits.
struct Fivebit8 {
  Nibbles8 q;   // 5-bit values 0..31
  __m256 d, m;  // rows 0..7: d, and m for blocks with a min (Q5_1)
};

// Loads the block heads and the nibbles of 8 rows: qh at byte kQh of a block, qs at kQs,
// {f16 d, f16 m} at byte 0 when kMin (else f16 d). Bit 4 is or-ed into the nibbles: byte
// shuffles spread qh bytes 0..3 over the 16 + 16 elements of each lane (byte k tests bit
// k % 8 of its qh byte), and a compare turns set bits into 0x10.
template <int kQh, int kQs, bool kMin, class P>
SPW_INLINE void unpack_fivebit8(const P& p, int64_t off, Fivebit8& u) {
  constexpr int64_t kOnes = 0x0101010101010101;
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201));
  const __m256i b4 = _mm256_set1_epi8(0x10);
  const __m256i idx_lo =
      _mm256_setr_epi64x(kOnes * kQh, kOnes * (kQh + 1), kOnes * kQh, kOnes * (kQh + 1));
  const __m256i idx_hi = _mm256_setr_epi64x(kOnes * (kQh + 2), kOnes * (kQh + 3), kOnes * (kQh + 2),
                                            kOnes * (kQh + 3));
  __m256i h[4];
  SPW_UNROLL for (int i = 0; i < 4; ++i) {
    h[i] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(p[i + 4] + off),
                               reinterpret_cast<const __m128i*>(p[i] + off));
  }
  if constexpr (kMin) {
    head_f16_pairs8(h, u.d, u.m);
  } else {
    u.d = head_f16x8(h);
  }
  unpack_nibbles8(p, off + kQs, u.q);
  SPW_UNROLL for (int i = 0; i < 4; ++i) {
    const __m256i set_lo =
        _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(h[i], idx_lo), bit), bit);
    const __m256i set_hi =
        _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(h[i], idx_hi), bit), bit);
    u.q.lo[i] = _mm256_or_si256(u.q.lo[i], _mm256_and_si256(set_lo, b4));
    u.q.hi[i] = _mm256_or_si256(u.q.hi[i], _mm256_and_si256(set_hi, b4));
  }
}

// Prefetches kBytes from p on (cache lines of 64 bytes) into L2 (the T1 hint): the
// L1 and its own prefetcher take them from there. With the next-but-one group of rows as
// the target (see tile_groups), decode on 1 and 2 threads ran 5-8 % faster than with
// T0 prefetches of the next group (docs/performance-history.md, bcb1b5e).
template <int kBytes>
inline void prefetch_step(const uint8_t* p) {
  SPW_UNROLL for (int i = 0; i < kBytes; i += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T1);
  }
}

// Stores lanes 0 .. n_rows - 1 of v (n_rows <= 8) to y.
inline void store_rows8(__m256 v, float* y, int n_rows) {
  if (n_rows == 8) {
    _mm256_storeu_ps(y, v);
  } else {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (int r = 0; r < n_rows; ++r) y[r] = tmp[r];
  }
}

// Sums of the activations over sub-blocks of 32 (pairs of Q8_K bsums), as 8 int16 in both
// lanes.
inline __m256i bsums32(const BlockQ8_K& x) {
  const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bsums));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bsums + 8));
  return _mm256_broadcastsi128_si256(_mm_hadd_epi16(lo, hi));
}

// The first 16 bytes of Q4_K blocks {f16 d, f16 dmin, scales[12]} of two rows (one per
// lane) -> per lane the 8 sub-block scales (bytes 0..7) and mins (bytes 8..15), 6 bits
// each (see q4_k_scale_min).
inline __m256i q4_k_scales_mins(__m256i h) {
  // b[j] = byte 4 + j of the lane. Low bits: sc 0..3 = b0..3 & 63, sc 4..7 = b8..11 & 15,
  // m 0..3 = b4..7 & 63, m 4..7 = b8..11 >> 4; high bits of sc / m 4..7: top 2 bits of
  // b0..3 / b4..7, moved to bits 4..5.
  const __m256i pick = _mm256_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15, 4,
                                        5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i mask_a =
      _mm256_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0, 63, 63, 63, 63,
                       15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
  const __m256i mask_b = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15, 0, 0,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
  const __m256i pick_hi =
      _mm256_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11, -1, -1, -1, -1, 4,
                       5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11);
  const __m256i p = _mm256_shuffle_epi8(h, pick);
  const __m256i low = _mm256_or_si256(_mm256_and_si256(p, mask_a),
                                      _mm256_and_si256(_mm256_srli_epi16(p, 4), mask_b));
  const __m256i top = _mm256_and_si256(_mm256_srli_epi16(_mm256_shuffle_epi8(h, pick_hi), 2),
                                       _mm256_set1_epi8(0x30));
  return _mm256_or_si256(low, top);
}

// ---- the blocks of the 32-element types, as the group kernels read them ----
//
// unpack() prepares the blocks at p[r] + off of 8 rows (a full interleaved group, P =
// InterleavedRows, is packed: see packs_nibbles in matmul_internal.h), scales() gives
// (from the blocks or what unpack() loaded) the 8 scales d and the 8 terms m per unit of
// activation sum (Q4_1, Q5_1: m; Q4_0: -8 d; Q5_0: -16 d). The AVX2 and AVX-512 kernel
// structs derive from these and add their integer products, dot(), and their tile width
// kC (tokens per unpacked block).

struct Q4_0Blocks {
  static constexpr bool kFiveBit = false;
  static constexpr int kBytes = sizeof(BlockQ4_0);
  static constexpr bool kHasMin = true;
  template <class P>
  using Unpacked = typename Pick<P::kStride != 0, PackedNibbles8, Nibbles8>::type;
  template <class P>
  static SPW_INLINE void unpack(const P& p, int64_t off, Unpacked<P>& u) {
    if constexpr (P::kStride != 0) {
      unpack_packed_nibbles8<8 * packed_fields(DType::Q4_0)>(p[0] + off, u);
    } else {
      unpack_nibbles8(p, off + offsetof(BlockQ4_0, qs), u);
    }
  }
  template <class P>
  static SPW_INLINE void scales(const P& p, int64_t off, const Unpacked<P>&, __m256& d, __m256& m) {
    if constexpr (P::kStride != 0) {
      d = packed_f16x8(p[0] + off);
    } else {
      d = f16x8(p, off);
    }
    m = _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
  }
};

struct Q4_1Blocks {
  static constexpr bool kFiveBit = false;
  static constexpr int kBytes = sizeof(BlockQ4_1);
  static constexpr bool kHasMin = true;
  template <class P>
  using Unpacked = typename Pick<P::kStride != 0, PackedNibbles8, Nibbles8>::type;
  template <class P>
  static SPW_INLINE void unpack(const P& p, int64_t off, Unpacked<P>& u) {
    if constexpr (P::kStride != 0) {
      unpack_packed_nibbles8<8 * packed_fields(DType::Q4_1)>(p[0] + off, u);
    } else {
      unpack_nibbles8(p, off + offsetof(BlockQ4_1, qs), u);
    }
  }
  // Packed: d and m of rows 0..7 in a row. Else the {d, m} pairs of rows (0, 1, 4, 5) and
  // (2, 3, 6, 7) as f32, so that the even / odd lanes of the two interleave into rows 0..7.
  template <class P>
  static SPW_INLINE void scales(const P& p, int64_t off, const Unpacked<P>&, __m256& d, __m256& m) {
    if constexpr (P::kStride != 0) {
      d = packed_f16x8(p[0] + off);
      m = packed_f16x8(p[0] + off + 16);
    } else {
      const __m256 a = _mm256_cvtph_ps(_mm_setr_epi32(
          static_cast<int>(load_u32(p[0] + off)), static_cast<int>(load_u32(p[1] + off)),
          static_cast<int>(load_u32(p[4] + off)), static_cast<int>(load_u32(p[5] + off))));
      const __m256 b = _mm256_cvtph_ps(_mm_setr_epi32(
          static_cast<int>(load_u32(p[2] + off)), static_cast<int>(load_u32(p[3] + off)),
          static_cast<int>(load_u32(p[6] + off)), static_cast<int>(load_u32(p[7] + off))));
      d = _mm256_shuffle_ps(a, b, 0x88);
      m = _mm256_shuffle_ps(a, b, 0xDD);
    }
  }
};

struct Q5_0Blocks {
  static constexpr bool kFiveBit = true;
  static constexpr int kBytes = sizeof(BlockQ5_0);
  static constexpr bool kHasMin = true;
  template <class P>
  using Unpacked = typename Pick<P::kStride != 0, PackedNibbles8, Fivebit8>::type;
  template <class P>
  static SPW_INLINE void unpack(const P& p, int64_t off, Unpacked<P>& u) {
    if constexpr (P::kStride != 0) {
      constexpr int kF = packed_fields(DType::Q5_0);
      unpack_packed_fivebit8<8 * kF, 8 * (kF + 4)>(p[0] + off, u);
    } else {
      unpack_fivebit8<offsetof(BlockQ5_0, qh), offsetof(BlockQ5_0, qs), false>(p, off, u);
    }
  }
  template <class P>
  static SPW_INLINE void scales(const P& p, int64_t off, const Unpacked<P>& u, __m256& d,
                                __m256& m) {
    if constexpr (P::kStride != 0) {
      d = packed_f16x8(p[0] + off);
    } else {
      d = u.d;
    }
    m = _mm256_mul_ps(d, _mm256_set1_ps(-16.0f));
  }
};

struct Q5_1Blocks {
  static constexpr bool kFiveBit = true;
  static constexpr int kBytes = sizeof(BlockQ5_1);
  static constexpr bool kHasMin = true;
  template <class P>
  using Unpacked = typename Pick<P::kStride != 0, PackedNibbles8, Fivebit8>::type;
  template <class P>
  static SPW_INLINE void unpack(const P& p, int64_t off, Unpacked<P>& u) {
    if constexpr (P::kStride != 0) {
      constexpr int kF = packed_fields(DType::Q5_1);
      unpack_packed_fivebit8<8 * kF, 8 * (kF + 4)>(p[0] + off, u);
    } else {
      unpack_fivebit8<offsetof(BlockQ5_1, qh), offsetof(BlockQ5_1, qs), true>(p, off, u);
    }
  }
  template <class P>
  static SPW_INLINE void scales(const P& p, int64_t off, const Unpacked<P>& u, __m256& d,
                                __m256& m) {
    if constexpr (P::kStride != 0) {
      d = packed_f16x8(p[0] + off);
      m = packed_f16x8(p[0] + off + 16);
    } else {
      d = u.d;
      m = u.m;
    }
  }
};

// y[c * ldy + r] = row p[r] . token c for r < n_rows (<= 8) and C tokens, block b of row r
// at p[r] + b * bs (bs: W::kBytes in GGUF's row layout, 8 W::kBytes in a group of
// interleaved rows, WeightLayout::kRows8). When `pf` is set
// (matrix-vector products), the next group of 8 rows (8 * kBytes per block, contiguous)
// is prefetched meanwhile: at T = 1 weights stream from memory once per token, and the
// hardware prefetcher alone does not keep up with 8 interleaved row streams.
template <class W, int C, class P>
inline void group8(const P& p, int64_t bs, const Q8ARow* x, int64_t nb, float* y, int64_t ldy,
                   int n_rows, const uint8_t* pf) {
  constexpr int kStep = 8 * W::kBytes;
  if constexpr (P::kStride != 0) bs = P::kStride;
  __m256 acc[C], macc[C];
  SPW_UNROLL for (int c = 0; c < C; ++c) acc[c] = macc[c] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if (pf != nullptr) prefetch_step<kStep>(pf + b * kStep);
    const int64_t off = b * bs;
    typename W::template Unpacked<P> u;
    W::unpack(p, off, u);
    __m256 d, m = _mm256_setzero_ps();
    W::scales(p, off, u, d, m);
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
    store_rows8(W::kHasMin ? _mm256_add_ps(acc[c], macc[c]) : acc[c], y + c * ldy, n_rows);
  }
}

// The legacy types as a group family of tile_groups: Q8A activation rows, blocks of 32.
template <class W>
struct LegacyGroups {
  static constexpr int kBytes = W::kBytes;
  static constexpr int kElems = kQK;
  static constexpr int kC = W::kC;
  using X = Q8ARow;
  static X x_row(const void* xq, int64_t cols, int64_t t) { return q8a_row(xq, cols, t); }
  template <int C, class P>
  static void run(const P& p, int64_t bs, const X* x, int64_t nb, float* y, int64_t ldy, int n_rows,
                  const uint8_t* pf) {
    group8<W, C>(p, bs, x, nb, y, ldy, n_rows, pf);
  }
};

// A 32-element type's blocks (Q4_0Blocks .. Q5_1Blocks: unpack, scales) with family D's
// integer products.
template <class Blocks, class D>
struct LegacyW : Blocks {
  static constexpr int kC = D::kLegacyTile;
  static SPW_INLINE __m256i dot(const Nibbles8& u, const int8_t* xq) { return D::nibbles(u, xq); }
  static SPW_INLINE __m256i dot(const Fivebit8& u, const int8_t* xq) { return D::fivebit(u.q, xq); }
  static SPW_INLINE __m256i dot(const PackedNibbles8& u, const int8_t* xq) {
    if constexpr (Blocks::kFiveBit) {
      return D::packed_fivebit(u, xq);
    } else {
      return D::packed_nibbles(u, xq);
    }
  }
};

constexpr int64_t kPanel = 64;          // weight rows kept hot in cache while tokens stream by
constexpr int64_t kPrefetchGroups = 2;  // how far ahead a matrix-vector product prefetches

// G::run<c> for the c <= C tokens of a tile, prefetching from `pf` when it is set.
template <class G, int C, class P>
inline void run_tokens(int c, const P& p, int64_t bs, const typename G::X* x, int64_t nb, float* y,
                       int64_t ldy, int n_rows, const uint8_t* pf) {
  if constexpr (C > 1) {
    if (c < C) {
      run_tokens<G, C - 1>(c, p, bs, x, nb, y, ldy, n_rows, pf);
      return;
    }
  }
  G::template run<C>(p, bs, x, nb, y, ldy, n_rows, pf);
}

// f(rows) with the group's 8 rows (block 0 at p[i], blocks bs bytes apart) in the form
// G's kernels take: InterleavedRows for a full interleaved group of a legacy type,
// RowPointers for other groups of a legacy type, the pointer array itself for the K types
// (never interleaved).
template <class G, class F>
inline void with_rows(const uint8_t* const* p, int64_t bs, F&& f) {
  if constexpr (G::kElems == kQK) {
    if (bs == InterleavedRows<G::kBytes>::kStride) {
      f(InterleavedRows<G::kBytes>{p[0]});
    } else {
      f(RowPointers{p});
    }
  } else {
    f(p);
  }
}

// Block 0 of the 8 rows of the group at r (n of them exist; the rest repeat the last), and
// the distance between a row's blocks (kBytes: bytes of a block). A full group of a
// WeightLayout::kRows8 matrix (r + 8 <= `interleaved`) has its rows' blocks interleaved:
// row r + i's block 0 at the group's start + i kBytes, its blocks 8 kBytes apart; other
// rows lie as in GGUF, rb bytes apart.
template <int kBytes>
inline int64_t group_rows(const uint8_t* base, uint64_t rb, int64_t interleaved, int64_t r, int n,
                          const uint8_t** p) {
  if (r + 8 <= interleaved) {
    for (int i = 0; i < 8; ++i) p[i] = base + static_cast<uint64_t>(r) * rb + i * kBytes;
    return 8 * kBytes;
  }
  for (int i = 0; i < 8; ++i) p[i] = base + (r + (i < n ? i : n - 1)) * rb;
  return kBytes;
}

// y[t * ldy + r] for r in [r0, r1), t in [t0, t1) with the group kernels of G. One token
// (matrix-vector products): groups of 8 rows in order, each prefetching the group after
// the next one of the matrix (kPrefetchGroups ahead), also past r1: a thread's next piece
// of a job usually starts there (see ThreadPool::parallel_for), so the stream of rows
// goes on across pieces.
// More tokens: 64-row panels, within a panel G::kC tokens at a time over groups of 8 rows.
// While the first tile of tokens works on a group, the same group of the next panel is
// prefetched: a step of a few tokens (batched decoding) reads every weight once from
// memory, as a matrix-vector product does, and the later tiles find the panel in cache.
// A group at the end of the range with fewer than 8 rows repeats its last row and stores
// only the rows that exist.
template <class G>
void tile_groups(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
                 int64_t t1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / G::kElems;
  const auto* base = static_cast<const uint8_t*>(w.data);
  const uint64_t rb = w.row_bytes;
  const int64_t interleaved = w.layout == WeightLayout::kRows8 ? w.rows / 8 * 8 : 0;
  const uint8_t* p[8];
  if (t1 - t0 == 1) {
    const typename G::X x[1] = {G::x_row(xq, w.cols, t0)};
    for (int64_t r = r0; r < r1; r += 8) {
      const int n = static_cast<int>(min64(8, r1 - r));
      const int64_t bs = group_rows<G::kBytes>(base, rb, interleaved, r, n, p);
      const uint8_t* pf = r + 8 * (kPrefetchGroups + 1) <= w.rows
                              ? base + static_cast<uint64_t>(r + 8 * kPrefetchGroups) * rb
                              : nullptr;
      with_rows<G>(p, bs, [&](const auto& rows) {
        G::template run<1>(rows, bs, x, nb, y + t0 * ldy + r, ldy, n, pf);
      });
    }
    return;
  }
  for (int64_t p0 = r0; p0 < r1; p0 += kPanel) {
    const int64_t p1 = min64(r1, p0 + kPanel);
    for (int64_t t = t0; t < t1; t += G::kC) {
      const int c = static_cast<int>(min64(G::kC, t1 - t));
      typename G::X x[G::kC];
      for (int i = 0; i < c; ++i) x[i] = G::x_row(xq, w.cols, t + i);
      for (int64_t r = p0; r < p1; r += 8) {
        const int n = static_cast<int>(min64(8, p1 - r));
        const int64_t bs = group_rows<G::kBytes>(base, rb, interleaved, r, n, p);
        const uint8_t* pf = t == t0 && r + kPanel + 8 <= w.rows
                                ? base + static_cast<uint64_t>(r + kPanel) * rb
                                : nullptr;
        with_rows<G>(p, bs, [&](const auto& rows) {
          run_tokens<G, G::kC>(c, rows, bs, x, nb, y + t * ldy + r, ldy, n, pf);
        });
      }
    }
  }
}

// ---- K types (Q4_K, Q6_K): groups of 8 weight rows ----
//
// Per 256-element super-block, each of the 8 rows' integer dot products with one Q8_K
// activation block, sub-block scales applied in integer arithmetic (D::madd_acc: vpmaddwd
// and vpaddd in AVX2, one vpdpwssd in AVX-512 VNNI), is one
// vector of 8 int32 partial sums; the 8 rows' vectors are reduced with horizontal adds
// into one vector of 8 row sums, converted and accumulated with one FMA:
// acc[r] += isum[r] * (d_w[r] * d_x). The sub-block mins of Q4_K (against the
// activations' 16-element sums) are summed the same way, 8 rows at once, into a second
// vector subtracted at the end; Q6_K's offset of -32 is folded into the integer sums. A
// tile of C tokens reads each row's super-block once and repeats exactly the per-token
// arithmetic, so, as for the legacy types, a token's outputs do not depend on the tile
// shape, the row range or the thread count.

template <class D>
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
        const uint8_t* qs = p[r] + off + offsetof(BlockQ4_K, qs);
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
            iacc[c] = D::madd_acc(iacc[c], pairs, s_pair);
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

template <class D>
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
              iacc[c] = D::madd_acc(iacc[c], pairs, sv[j]);
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

// A family's table of tile kernels: D its integer products, Q8 its Q8_0 block type.
template <class D, class Q8>
MatmulKernels group_matmul_kernels() {
  MatmulKernels k;
  k.q4_0 = tile_groups<LegacyGroups<LegacyW<Q4_0Blocks, D>>>;
  k.q4_1 = tile_groups<LegacyGroups<LegacyW<Q4_1Blocks, D>>>;
  k.q5_0 = tile_groups<LegacyGroups<LegacyW<Q5_0Blocks, D>>>;
  k.q5_1 = tile_groups<LegacyGroups<LegacyW<Q5_1Blocks, D>>>;
  k.q8_0 = tile_groups<LegacyGroups<Q8>>;
  k.q4_k = tile_groups<Q4KGroups<D>>;
  k.q6_k = tile_groups<Q6KGroups<D>>;
  return k;
}

}  // namespace
}  // namespace spillway::ops::detail
