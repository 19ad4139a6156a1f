// Scalar integer kernels: the reference for the SIMD families. They compute the same
// quantized math (weights in their blocks x 8-bit activation blocks, integer block sums,
// f32 scales) one output at a time. The 32-element types read each block through
// legacy_block (either weight layout); the K types are always in GGUF's row layout.
#include <cstring>

#include "matmul_internal.h"

namespace spillway::ops::detail {

namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
float load_f16(const uint8_t* p) {
  return f16_to_f32(load_u16(p));
}

// Q4_0: 18-byte blocks {f16 d, 16 bytes of nibbles}; value = d * (q - 8). Element j < 16
// is the low nibble of qs[j], element j + 16 the high nibble.
float dot_q4_0(const WeightMatrix& w, int64_t r, const Q8ARow& x, int64_t nb) {
  float sum = 0.0f;
  uint8_t tmp[kMaxLegacyBlock];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = legacy_block(w, r, b, tmp);
    const float d = load_f16(p);
    const uint8_t* qs = p + 2;
    const int8_t* xq = x.qs + b * kQK;
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j) {
      isum += ((qs[j] & 0x0F) - 8) * xq[j] + ((qs[j] >> 4) - 8) * xq[j + 16];
    }
    sum += d * x.d[b] * static_cast<float>(isum);
  }
  return sum;
}

// Q4_1: 20-byte blocks {f16 d, f16 m, 16 bytes of nibbles}; value = d * q + m.
float dot_q4_1(const WeightMatrix& w, int64_t r, const Q8ARow& x, int64_t nb) {
  float sum = 0.0f;
  uint8_t tmp[kMaxLegacyBlock];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = legacy_block(w, r, b, tmp);
    const float d = load_f16(p), m = load_f16(p + 2);
    const uint8_t* qs = p + 4;
    const int8_t* xq = x.qs + b * kQK;
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j) isum += (qs[j] & 0x0F) * xq[j] + (qs[j] >> 4) * xq[j + 16];
    sum += d * x.d[b] * static_cast<float>(isum) + m * x.s[b];
  }
  return sum;
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The 5-bit value of element j < 16 and j + 16 of a Q5 block: the nibbles as in Q4_0/Q4_1,
// bit 4 of element j in bit j of the little-endian qh word.
int q5_lo(const uint8_t* qs, uint32_t qh, int j) {
  return (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
}
int q5_hi(const uint8_t* qs, uint32_t qh, int j) {
  return (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
}

// Q5_0: 22-byte blocks {f16 d, qh[4], qs[16]}; value = d * (q - 16).
float dot_q5_0(const WeightMatrix& w, int64_t r, const Q8ARow& x, int64_t nb) {
  float sum = 0.0f;
  uint8_t tmp[kMaxLegacyBlock];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = legacy_block(w, r, b, tmp);
    const float d = load_f16(p);
    const uint32_t qh = load_u32(p + 2);
    const uint8_t* qs = p + 6;
    const int8_t* xq = x.qs + b * kQK;
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j) {
      isum += (q5_lo(qs, qh, j) - 16) * xq[j] + (q5_hi(qs, qh, j) - 16) * xq[j + 16];
    }
    sum += d * x.d[b] * static_cast<float>(isum);
  }
  return sum;
}

// Q5_1: 24-byte blocks {f16 d, f16 m, qh[4], qs[16]}; value = d * q + m.
float dot_q5_1(const WeightMatrix& w, int64_t r, const Q8ARow& x, int64_t nb) {
  float sum = 0.0f;
  uint8_t tmp[kMaxLegacyBlock];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = legacy_block(w, r, b, tmp);
    const float d = load_f16(p), m = load_f16(p + 2);
    const uint32_t qh = load_u32(p + 4);
    const uint8_t* qs = p + 8;
    const int8_t* xq = x.qs + b * kQK;
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j) isum += q5_lo(qs, qh, j) * xq[j] + q5_hi(qs, qh, j) * xq[j + 16];
    sum += d * x.d[b] * static_cast<float>(isum) + m * x.s[b];
  }
  return sum;
}

// Q8_0: 34-byte blocks {f16 d, int8 qs[32]}.
float dot_q8_0(const WeightMatrix& w, int64_t r, const Q8ARow& x, int64_t nb) {
  float sum = 0.0f;
  uint8_t tmp[kMaxLegacyBlock];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = legacy_block(w, r, b, tmp);
    const float d = load_f16(p);
    const auto* qs = reinterpret_cast<const int8_t*>(p + 2);
    const int8_t* xq = x.qs + b * kQK;
    int32_t isum = 0;
    for (int j = 0; j < 32; ++j) isum += qs[j] * xq[j];
    sum += d * x.d[b] * static_cast<float>(isum);
  }
  return sum;
}

// Q4_K: 144-byte super-blocks {f16 d, f16 dmin, scales[12], qs[128]}; sub-block j of 32
// has value d * sc_j * q - dmin * m_j; qs[32 c + l] holds element 64 c + l (low nibble)
// and 64 c + 32 + l (high nibble).
float dot_q4_k(const uint8_t* p, uint64_t stride, const BlockQ8_K* x, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b, p += stride) {
    const float d = load_f16(p), dmin = load_f16(p + 2);
    const uint8_t* scales = p + 4;
    const uint8_t* qs = p + 16;
    const BlockQ8_K& xb = x[b];
    int32_t isum = 0, msum = 0;
    for (int c = 0; c < 4; ++c) {
      int sc_lo, m_lo, sc_hi, m_hi;
      q4_k_scale_min(scales, 2 * c, sc_lo, m_lo);
      q4_k_scale_min(scales, 2 * c + 1, sc_hi, m_hi);
      int32_t s_lo = 0, s_hi = 0;
      for (int l = 0; l < 32; ++l) {
        s_lo += (qs[32 * c + l] & 0x0F) * xb.qs[64 * c + l];
        s_hi += (qs[32 * c + l] >> 4) * xb.qs[64 * c + 32 + l];
      }
      isum += sc_lo * s_lo + sc_hi * s_hi;
      msum += m_lo * (xb.bsums[4 * c] + xb.bsums[4 * c + 1]) +
              m_hi * (xb.bsums[4 * c + 2] + xb.bsums[4 * c + 3]);
    }
    sum += xb.d * (d * static_cast<float>(isum) - dmin * static_cast<float>(msum));
  }
  return sum;
}

// Q6_K: 210-byte super-blocks {ql[128], qh[64], int8 scales[16], f16 d}; value =
// d * scales[g] * (q - 32) for group g of 16 elements, q the 6-bit value.
float dot_q6_k(const uint8_t* p, uint64_t stride, const BlockQ8_K* x, int64_t nb) {
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b, p += stride) {
    const uint8_t* ql = p;
    const uint8_t* qh = p + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
    const float d = load_f16(p + 208);
    const BlockQ8_K& xb = x[b];
    int32_t isum = 0;
    for (int n = 0; n < 2; ++n) {
      const uint8_t* l_ = ql + 64 * n;
      const uint8_t* h_ = qh + 32 * n;
      const int8_t* xq = xb.qs + 128 * n;
      const int8_t* s = sc + 8 * n;
      int32_t part[8] = {};
      for (int l = 0; l < 32; ++l) {
        const int g = l / 16;
        const int q1 = (l_[l] & 0x0F) | ((h_[l] & 3) << 4);
        const int q2 = (l_[l + 32] & 0x0F) | (((h_[l] >> 2) & 3) << 4);
        const int q3 = (l_[l] >> 4) | (((h_[l] >> 4) & 3) << 4);
        const int q4 = (l_[l + 32] >> 4) | (((h_[l] >> 6) & 3) << 4);
        part[g] += q1 * xq[l];
        part[g + 2] += q2 * xq[l + 32];
        part[g + 4] += q3 * xq[l + 64];
        part[g + 6] += q4 * xq[l + 96];
      }
      for (int g = 0; g < 8; ++g) isum += s[g] * part[g];
    }
    int32_t off = 0;
    for (int g = 0; g < 16; ++g) off += sc[g] * xb.bsums[g];
    sum += d * xb.d * static_cast<float>(isum - 32 * off);
  }
  return sum;
}

template <class Dot>
void tile_legacy(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
                 int64_t t1, float* y, int64_t ldy, Dot dot) {
  const int64_t nb = w.cols / kQK;
  for (int64_t t = t0; t < t1; ++t) {
    const Q8ARow x = q8a_row(xq, w.cols, t);
    for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = dot(w, r, x, nb);
  }
}

template <class Dot>
void tile_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0, int64_t t1,
            float* y, int64_t ldy, Dot dot) {
  const int64_t nb = w.cols / kQKK;
  for (int64_t t = t0; t < t1; ++t) {
    const auto* x = reinterpret_cast<const BlockQ8_K*>(static_cast<const std::byte*>(xq) +
                                                       t * q8k_row_bytes(w.cols));
    for (int64_t r = r0; r < r1; ++r)
      y[t * ldy + r] = dot(static_cast<const uint8_t*>(w.data) + r * w.row_bytes,
                           dtype_info(w.type).type_size, x, nb);
  }
}

void tile_q4_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy(w, xq, r0, r1, t0, t1, y, ldy, dot_q4_0);
}
void tile_q4_1(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy(w, xq, r0, r1, t0, t1, y, ldy, dot_q4_1);
}
void tile_q5_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy(w, xq, r0, r1, t0, t1, y, ldy, dot_q5_0);
}
void tile_q5_1(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy(w, xq, r0, r1, t0, t1, y, ldy, dot_q5_1);
}
void tile_q8_0(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_legacy(w, xq, r0, r1, t0, t1, y, ldy, dot_q8_0);
}
void tile_q4_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_k(w, xq, r0, r1, t0, t1, y, ldy, dot_q4_k);
}
void tile_q6_k(const WeightMatrix& w, const void* xq, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t ldy) {
  tile_k(w, xq, r0, r1, t0, t1, y, ldy, dot_q6_k);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

}  // namespace

const MatmulKernels& scalar_matmul_kernels() {
  static const MatmulKernels k = {tile_q4_0,           tile_q4_1,          tile_q5_0, tile_q5_1,
                                  tile_q8_0,           tile_q4_k,          tile_q6_k, dot_f32,
                                  quantize_q8a_scalar, quantize_q8k_scalar};
  return k;
}

}  // namespace spillway::ops::detail
