// Block layouts of the quantized GGUF types and their scalar reference math. These are
// the ground truth that every optimized kernel in ops/ is tested against.
#pragma once

#include <cstdint>

#include "spillway/core/types.h"

namespace spillway {

inline constexpr int kQK = 32;    // elements per block of the legacy types (Q4_0 ... Q8_1)
inline constexpr int kQKK = 256;  // elements per super-block of the K types

// Legacy blocks: 32 elements each. f16 fields hold IEEE half bits.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ8_1 {
  uint16_t d;
  uint16_t s;
  int8_t qs[kQK];
};
// K blocks: 256 elements each.
struct BlockQ2_K {
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d;
  uint16_t dmin;
};
struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
struct BlockQ8_K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block, from its 12 packed
// scale bytes: sub-blocks 0..3 keep theirs in the low 6 bits of bytes j (scale) and
// j + 4 (min); sub-blocks 4..7 in the nibbles of byte j + 4, with their top 2 bits in
// the top bits of bytes j - 4 (scale) and j (min).
inline void q4_k_scale_min(const uint8_t* scales, int j, int& scale, int& min) {
  if (j < 4) {
    scale = scales[j] & 63;
    min = scales[j + 4] & 63;
  } else {
    scale = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
    min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// Dequantizes n elements of a row of type t (n a multiple of the block size; src needs
// no alignment). Throws UnsupportedError for a type without a dequantizer.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// Scalar reference: sum_i dequant(row)[i] * x[i], accumulated in double.
double dot_row_ref(DType t, const void* row, const float* x, int64_t n);

// Quantizes n f32 values into blocks of t. F16, BF16, Q4_0 ... Q8_1 and Q8_K follow
// ggml's reference rounding (F16 ... Q8_0 are tested byte-identical against the gguf
// package); Q2_K ... Q6_K use a small per-sub-block scale search of their own (error
// comparable to ggml's, bytes not identical). Every DType
// is supported; an id outside the enum throws UnsupportedError. Used by tests to write
// models of any type.
// All three functions throw InvalidArgument when n is negative or not a multiple of the
// block size.
void quantize_row_ref(DType t, const float* src, void* dst, int64_t n);

}  // namespace spillway
