// Scalar reference dequantizers, dot products and quantizers of the GGUF block types.
//
// Bit layouts (ggml's): legacy blocks hold 32 elements, element j < 16 in the low nibble
// of qs[j] and element j + 16 in its high nibble (the 5-bit types keep bit 4 of element
// i in bit i of the little-endian qh word). K blocks hold 256 elements in sub-blocks of
// 16 or 32 with 4- to 8-bit sub-block scales under one or two f16 super-block scales.
//
// The dequantizers evaluate exactly the float expressions of the gguf package's numpy
// dequantizers (same operations, same order, single rounding per operation), so their
// results are bit-identical to it; the golden tests check that.
#include "spillway/core/quant.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "spillway/core/error.h"

// Keep every product rounded on its own, as the references do. The dequantizers' products
// are exact in f32 (an f16 scale times a small integer), so for them contraction is
// harmless; the legacy quantizers' `x * id + 8.5f` could land on the other side of a
// rounding boundary when fused.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace spillway {

namespace {

std::string type_label(DType t) {
  const std::optional<DTypeInfo> info = dtype_info(static_cast<uint32_t>(t));
  if (info) return std::string(info->name);
  return "type id " + std::to_string(static_cast<uint32_t>(t));
}

// Blocks are read and written with memcpy: rows in a mapped file need no alignment.
template <typename Block>
Block load_block(const uint8_t* p) {
  Block b;
  std::memcpy(&b, p, sizeof(Block));
  return b;
}

float half(uint16_t h) {
  return f16_to_f32(h);
}

// Round half to even under the default rounding mode (ggml's nearest_int).
int nearest_int(float v) {
  return static_cast<int>(std::lrint(v));
}

// ---------------------------------------------------------------------------------------
// Dequantization of one block. Each writes block_size floats to y.

void dequant_q4_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ4_0>(p);
  const float d = half(b.d);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>((b.qs[j] & 0x0f) - 8);
    y[j + kQK / 2] = d * static_cast<float>((b.qs[j] >> 4) - 8);
  }
}

void dequant_q4_1(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ4_1>(p);
  const float d = half(b.d);
  const float m = half(b.m);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>(b.qs[j] & 0x0f) + m;
    y[j + kQK / 2] = d * static_cast<float>(b.qs[j] >> 4) + m;
  }
}

uint32_t load_qh(const uint8_t (&qh)[4]) {
  return static_cast<uint32_t>(qh[0]) | static_cast<uint32_t>(qh[1]) << 8 |
         static_cast<uint32_t>(qh[2]) << 16 | static_cast<uint32_t>(qh[3]) << 24;
}

void dequant_q5_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ5_0>(p);
  const float d = half(b.d);
  const uint32_t qh = load_qh(b.qh);
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (b.qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + kQK / 2] = d * static_cast<float>(hi - 16);
  }
}

void dequant_q5_1(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ5_1>(p);
  const float d = half(b.d);
  const float m = half(b.m);
  const uint32_t qh = load_qh(b.qh);
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (b.qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + kQK / 2] = d * static_cast<float>(hi) + m;
  }
}

void dequant_q8_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ8_0>(p);
  const float d = half(b.d);
  for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(b.qs[j]);
}

void dequant_q8_1(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ8_1>(p);
  const float d = half(b.d);
  for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(b.qs[j]);
}

void dequant_q2_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ2_K>(p);
  const float d = half(b.d);
  const float dmin = half(b.dmin);
  // Element e = half_idx*128 + s*32 + l sits in bits 2s of qs[half_idx*32 + l]; its
  // sub-block (16 elements) is e / 16, with scale in the low and min in the high nibble.
  for (int e = 0; e < kQKK; ++e) {
    const int half_idx = e / 128;
    const int s = (e % 128) / 32;
    const int l = e % 32;
    const int q = (b.qs[half_idx * 32 + l] >> (2 * s)) & 3;
    const uint8_t sc = b.scales[e / 16];
    const float dl = d * static_cast<float>(sc & 0x0f);
    const float ml = dmin * static_cast<float>(sc >> 4);
    y[e] = dl * static_cast<float>(q) - ml;
  }
}

// The 16 6-bit scales of a Q3_K block, as stored (0..63, bias 32 not yet removed).
std::array<int, 16> unpack_q3_k_scales(const uint8_t (&sc)[12]) {
  std::array<int, 16> out{};
  for (int i = 0; i < 16; ++i) {
    const int low = i < 8 ? (sc[i] & 0x0f) : (sc[i - 8] >> 4);
    const int high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
    out[i] = low | (high << 4);
  }
  return out;
}

void dequant_q3_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ3_K>(p);
  const float d = half(b.d);
  const std::array<int, 16> sc = unpack_q3_k_scales(b.scales);
  for (int e = 0; e < kQKK; ++e) {
    const int half_idx = e / 128;
    const int s = (e % 128) / 32;
    const int l = e % 32;
    const int low = (b.qs[half_idx * 32 + l] >> (2 * s)) & 3;
    const int high_set = (b.hmask[l] >> (e / 32)) & 1;  // a set bit means no offset
    const int q = low - (high_set ? 0 : 4);
    const float dl = d * static_cast<float>(sc[e / 16] - 32);
    y[e] = dl * static_cast<float>(q);
  }
}

// The 8 6-bit scales and mins of a Q4_K/Q5_K block.
void unpack_q4_k_scales(const uint8_t (&sc)[12], int* scale, int* min) {
  for (int j = 0; j < 8; ++j) q4_k_scale_min(sc, j, scale[j], min[j]);
}

void dequant_q4_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ4_K>(p);
  const float d = half(b.d);
  const float dmin = half(b.dmin);
  int scale[8], min[8];
  unpack_q4_k_scales(b.scales, scale, min);
  // Sub-block j (32 elements) = chunk*2 + nibble: nibble `nibble` of qs[chunk*32 + l].
  for (int j = 0; j < 8; ++j) {
    const float ds = d * static_cast<float>(scale[j]);
    const float dm = dmin * static_cast<float>(min[j]);
    const int chunk = j / 2;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int q = (b.qs[chunk * 32 + l] >> shift) & 0x0f;
      y[j * 32 + l] = ds * static_cast<float>(q) - dm;
    }
  }
}

void dequant_q5_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ5_K>(p);
  const float d = half(b.d);
  const float dmin = half(b.dmin);
  int scale[8], min[8];
  unpack_q4_k_scales(b.scales, scale, min);
  for (int j = 0; j < 8; ++j) {
    const float ds = d * static_cast<float>(scale[j]);
    const float dm = dmin * static_cast<float>(min[j]);
    const int chunk = j / 2;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int q = ((b.qs[chunk * 32 + l] >> shift) & 0x0f) | (((b.qh[l] >> j) & 1) << 4);
      y[j * 32 + l] = ds * static_cast<float>(q) - dm;
    }
  }
}

void dequant_q6_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ6_K>(p);
  const float d = half(b.d);
  // Element e = half_idx*128 + r: low 4 bits in nibble r/64 of ql[half_idx*64 + r%64],
  // high 2 bits in bits 2*(r/32) of qh[half_idx*32 + r%32].
  for (int e = 0; e < kQKK; ++e) {
    const int half_idx = e / 128;
    const int r = e % 128;
    const int low = (b.ql[half_idx * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
    const int high = (b.qh[half_idx * 32 + r % 32] >> (2 * (r / 32))) & 3;
    const int q = (low | (high << 4)) - 32;
    const float dl = d * static_cast<float>(b.scales[e / 16]);
    y[e] = dl * static_cast<float>(q);
  }
}

void dequant_q8_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ8_K>(p);
  for (int j = 0; j < kQKK; ++j) y[j] = b.d * static_cast<float>(b.qs[j]);
}

void dequant_f32(const uint8_t* p, float* y) {
  std::memcpy(y, p, 4);
}

void dequant_f16(const uint8_t* p, float* y) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  *y = f16_to_f32(h);
}

void dequant_bf16(const uint8_t* p, float* y) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  *y = bf16_to_f32(h);
}

using DequantFn = void (*)(const uint8_t*, float*);

DequantFn dequant_fn(DType t) {
  switch (t) {
    case DType::F32:
      return dequant_f32;
    case DType::F16:
      return dequant_f16;
    case DType::BF16:
      return dequant_bf16;
    case DType::Q4_0:
      return dequant_q4_0;
    case DType::Q4_1:
      return dequant_q4_1;
    case DType::Q5_0:
      return dequant_q5_0;
    case DType::Q5_1:
      return dequant_q5_1;
    case DType::Q8_0:
      return dequant_q8_0;
    case DType::Q8_1:
      return dequant_q8_1;
    case DType::Q2_K:
      return dequant_q2_k;
    case DType::Q3_K:
      return dequant_q3_k;
    case DType::Q4_K:
      return dequant_q4_k;
    case DType::Q5_K:
      return dequant_q5_k;
    case DType::Q6_K:
      return dequant_q6_k;
    case DType::Q8_K:
      return dequant_q8_k;
  }
  return nullptr;
}

// Layout of t for an operation on n elements; throws for unknown types and bad n.
DTypeInfo checked_layout(DType t, int64_t n, const char* what) {
  const std::optional<DTypeInfo> info = dtype_info(static_cast<uint32_t>(t));
  if (!info)
    throw UnsupportedError(std::string(what) + ": unsupported tensor type " + type_label(t));
  if (n < 0 || n % info->block_size != 0) {
    throw InvalidArgument(std::string(what) + ": row of " + std::to_string(n) + " elements of " +
                          std::string(info->name) + ": expected a non-negative multiple of " +
                          std::to_string(info->block_size));
  }
  return *info;
}

// ---------------------------------------------------------------------------------------
// Reference quantizers of the legacy types (ggml's rounding rules).

template <typename Block>
void store_block(const Block& b, uint8_t* p) {
  std::memcpy(p, &b, sizeof(Block));
}

// The value of largest magnitude (the first one on ties), with its sign.
float signed_absmax(const float* x, int n) {
  float amax = 0.0f;
  float vmax = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      vmax = x[j];
    }
  }
  return vmax;
}

void min_max(const float* x, int n, float* lo, float* hi) {
  *lo = std::numeric_limits<float>::max();
  *hi = -std::numeric_limits<float>::max();
  for (int j = 0; j < n; ++j) {
    if (x[j] < *lo) *lo = x[j];
    if (x[j] > *hi) *hi = x[j];
  }
}

// Truncation toward zero of a value known to lie in [0, limit + 1), clamped to limit.
int trunc_clamp(float v, int limit) {
  return std::min(limit, std::max(0, static_cast<int>(v)));
}

void quant_q4_0(const float* x, uint8_t* p) {
  BlockQ4_0 b{};
  const float d = signed_absmax(x, kQK) / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = trunc_clamp(x[j] * id + 8.5f, 15);
    const int q1 = trunc_clamp(x[j + kQK / 2] * id + 8.5f, 15);
    b.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
  store_block(b, p);
}

void quant_q4_1(const float* x, uint8_t* p) {
  BlockQ4_1 b{};
  float lo, hi;
  min_max(x, kQK, &lo, &hi);
  const float d = (hi - lo) / 15.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  b.m = f32_to_f16(lo);
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = trunc_clamp((x[j] - lo) * id + 0.5f, 15);
    const int q1 = trunc_clamp((x[j + kQK / 2] - lo) * id + 0.5f, 15);
    b.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
  store_block(b, p);
}

void store_qh(uint32_t qh, uint8_t (&out)[4]) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(qh >> (8 * i));
}

void quant_q5_0(const float* x, uint8_t* p) {
  BlockQ5_0 b{};
  const float d = signed_absmax(x, kQK) / -16.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = trunc_clamp(x[j] * id + 16.5f, 31);
    const int q1 = trunc_clamp(x[j + kQK / 2] * id + 16.5f, 31);
    b.qs[j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    qh |= static_cast<uint32_t>(q0 >> 4) << j;
    qh |= static_cast<uint32_t>(q1 >> 4) << (j + kQK / 2);
  }
  store_qh(qh, b.qh);
  store_block(b, p);
}

void quant_q5_1(const float* x, uint8_t* p) {
  BlockQ5_1 b{};
  float lo, hi;
  min_max(x, kQK, &lo, &hi);
  const float d = (hi - lo) / 31.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  b.m = f32_to_f16(lo);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = trunc_clamp((x[j] - lo) * id + 0.5f, 31);
    const int q1 = trunc_clamp((x[j + kQK / 2] - lo) * id + 0.5f, 31);
    b.qs[j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    qh |= static_cast<uint32_t>(q0 >> 4) << j;
    qh |= static_cast<uint32_t>(q1 >> 4) << (j + kQK / 2);
  }
  store_qh(qh, b.qh);
  store_block(b, p);
}

float absmax(const float* x, int n) {
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}

void quant_q8_0(const float* x, uint8_t* p) {
  BlockQ8_0 b{};
  const float d = absmax(x, kQK) / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  for (int j = 0; j < kQK; ++j) b.qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  store_block(b, p);
}

void quant_q8_1(const float* x, uint8_t* p) {
  BlockQ8_1 b{};
  const float d = absmax(x, kQK) / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.d = f32_to_f16(d);
  int sum = 0;
  for (int j = 0; j < kQK; ++j) {
    b.qs[j] = static_cast<int8_t>(std::round(x[j] * id));
    sum += b.qs[j];
  }
  b.s = f32_to_f16(static_cast<float>(sum) * d);
  store_block(b, p);
}

void quant_q8_k(const float* x, uint8_t* p) {
  BlockQ8_K b{};
  const float vmax = signed_absmax(x, kQKK);
  if (vmax != 0.0f) {
    const float iscale = -127.0f / vmax;
    for (int j = 0; j < kQKK; ++j)
      b.qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * x[j])));
    for (int g = 0; g < kQKK / 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b.qs[g * 16 + l];
      b.bsums[g] = static_cast<int16_t>(sum);
    }
    b.d = 1.0f / iscale;
  }
  store_block(b, p);
}

void quant_f32(const float* x, uint8_t* p) {
  std::memcpy(p, x, 4);
}

void quant_f16(const float* x, uint8_t* p) {
  const uint16_t h = f32_to_f16(*x);
  std::memcpy(p, &h, 2);
}

void quant_bf16(const float* x, uint8_t* p) {
  const uint16_t h = f32_to_bf16(*x);
  std::memcpy(p, &h, 2);
}

// ---------------------------------------------------------------------------------------
// K-type quantizers: a small scale search per sub-block, then 4- to 8-bit sub-block
// scales under f16 super-block scales, then a final rounding against the stored scales.
// Not bit-identical to ggml's (which weights the search); the error bounds are tested.

// x ~ scale * q - min with q in [0, nmax], scale >= 0, min >= 0.
struct AffineFit {
  float scale;
  float min;
};

// Least-squares scale and offset for fixed q; offset forced <= 0 (min >= 0).
AffineFit solve_affine(const float* x, const int* q, int n, double* err) {
  double sq = 0, sqq = 0, sx = 0, sqx = 0;
  for (int i = 0; i < n; ++i) {
    sq += q[i];
    sqq += static_cast<double>(q[i]) * q[i];
    sx += x[i];
    sqx += static_cast<double>(q[i]) * x[i];
  }
  double scale = 0, offset = 0;
  const double det = n * sqq - sq * sq;
  if (det > 0) {
    scale = (n * sqx - sq * sx) / det;
    offset = (sqq * sx - sq * sqx) / det;
  }
  if (offset > 0 || det <= 0) {
    offset = 0;
    scale = sqq > 0 ? sqx / sqq : 0;
  }
  if (scale < 0) scale = 0;
  double e = 0;
  for (int i = 0; i < n; ++i) {
    const double r = scale * q[i] + offset - x[i];
    e += r * r;
  }
  *err = e;
  return {static_cast<float>(scale), static_cast<float>(-offset)};
}

AffineFit fit_affine(const float* x, int n, int nmax) {
  float lo, hi;
  min_max(x, n, &lo, &hi);
  if (lo > 0) lo = 0;
  if (hi <= lo) return {0.0f, -lo};
  int q[32];
  AffineFit best{(hi - lo) / nmax, -lo};
  double best_err = std::numeric_limits<double>::infinity();
  for (int step = -10; step <= 10; ++step) {
    const float iscale = (static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / (hi - lo);
    for (int i = 0; i < n; ++i) q[i] = std::clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax);
    double err;
    const AffineFit fit = solve_affine(x, q, n, &err);
    if (err < best_err) {
      best_err = err;
      best = fit;
    }
  }
  return best;
}

// x ~ scale * q with q in [-nneg, npos]; scale may be negative (the wider negative side
// then takes the value of largest magnitude).
float fit_symmetric(const float* x, int n, int nneg, int npos) {
  const float vmax = signed_absmax(x, n);
  if (vmax == 0.0f) return 0.0f;
  float best = vmax / static_cast<float>(-nneg);
  double best_err = std::numeric_limits<double>::infinity();
  for (int side = 0; side < 2; ++side) {
    const float target = side == 0 ? -static_cast<float>(nneg) : static_cast<float>(npos);
    for (int step = -10; step <= 10; ++step) {
      const float iscale = (target + 0.1f * static_cast<float>(step)) / vmax;
      double sqq = 0, sqx = 0, sxx = 0;
      for (int i = 0; i < n; ++i) {
        const int q = std::clamp(nearest_int(iscale * x[i]), -nneg, npos);
        sqq += static_cast<double>(q) * q;
        sqx += static_cast<double>(q) * x[i];
        sxx += static_cast<double>(x[i]) * x[i];
      }
      if (sqq == 0) continue;
      const double err = sxx - sqx * sqx / sqq;
      if (err < best_err) {
        best_err = err;
        best = static_cast<float>(sqx / sqq);
      }
    }
  }
  return best;
}

// Sub-block scales to `bits`-bit unsigned integers under one f16 super-block scale.
// Returns the stored f16 bits; writes the integers to out.
uint16_t quantize_scales_unsigned(const float* v, int n, int bits, int* out) {
  const int top = (1 << bits) - 1;
  float vmax = 0.0f;
  for (int j = 0; j < n; ++j) vmax = std::max(vmax, v[j]);
  const float d = vmax / static_cast<float>(top);
  const uint16_t d_bits = f32_to_f16(d);
  const float d_stored = f16_to_f32(d_bits);
  for (int j = 0; j < n; ++j) {
    out[j] = d_stored > 0.0f ? std::clamp(nearest_int(v[j] / d_stored), 0, top) : 0;
  }
  return d_bits;
}

// Signed sub-block scales to integers in [lo, hi] under one f16 super-block scale.
uint16_t quantize_scales_signed(const float* v, int n, int lo, int hi, int* out) {
  const float vmax = signed_absmax(v, n);
  const float d = vmax / static_cast<float>(lo);  // the largest magnitude maps to lo
  const uint16_t d_bits = f32_to_f16(d);
  const float d_stored = f16_to_f32(d_bits);
  for (int j = 0; j < n; ++j) {
    out[j] = d_stored != 0.0f ? std::clamp(nearest_int(v[j] / d_stored), lo, hi) : 0;
  }
  return d_bits;
}

// Final rounding of one element against its stored affine sub-block scale.
int requant_affine(float x, float ds, float dm, int nmax) {
  return ds > 0.0f ? std::clamp(nearest_int((x + dm) / ds), 0, nmax) : 0;
}

int requant_symmetric(float x, float ds, int nneg, int npos) {
  return ds != 0.0f ? std::clamp(nearest_int(x / ds), -nneg, npos) : 0;
}

void quant_q2_k(const float* x, uint8_t* p) {
  BlockQ2_K b{};
  float scale[16], min[16];
  for (int j = 0; j < 16; ++j) {
    const AffineFit f = fit_affine(x + 16 * j, 16, 3);
    scale[j] = f.scale;
    min[j] = f.min;
  }
  int ls[16], lm[16];
  b.d = quantize_scales_unsigned(scale, 16, 4, ls);
  b.dmin = quantize_scales_unsigned(min, 16, 4, lm);
  const float d = f16_to_f32(b.d);
  const float dmin = f16_to_f32(b.dmin);
  for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<uint8_t>(ls[j] | (lm[j] << 4));
  for (int e = 0; e < kQKK; ++e) {
    const int j = e / 16;
    const float ds = d * static_cast<float>(ls[j]);
    const float dm = dmin * static_cast<float>(lm[j]);
    const int q = requant_affine(x[e], ds, dm, 3);
    b.qs[(e / 128) * 32 + e % 32] |= static_cast<uint8_t>(q << (2 * ((e % 128) / 32)));
  }
  store_block(b, p);
}

void quant_q3_k(const float* x, uint8_t* p) {
  BlockQ3_K b{};
  float scale[16];
  for (int j = 0; j < 16; ++j) scale[j] = fit_symmetric(x + 16 * j, 16, 4, 3);
  int ls[16];
  b.d = quantize_scales_signed(scale, 16, -32, 31, ls);
  const float d = f16_to_f32(b.d);
  for (int i = 0; i < 16; ++i) {
    const int u = ls[i] + 32;  // 6 bits
    if (i < 8) {
      b.scales[i] |= static_cast<uint8_t>(u & 0x0f);
    } else {
      b.scales[i - 8] |= static_cast<uint8_t>((u & 0x0f) << 4);
    }
    b.scales[8 + i % 4] |= static_cast<uint8_t>((u >> 4) << (2 * (i / 4)));
  }
  for (int e = 0; e < kQKK; ++e) {
    const float ds = d * static_cast<float>(ls[e / 16]);
    const int u = requant_symmetric(x[e], ds, 4, 3) + 4;  // 0..7; bit 2 set means no offset
    b.qs[(e / 128) * 32 + e % 32] |= static_cast<uint8_t>((u & 3) << (2 * ((e % 128) / 32)));
    b.hmask[e % 32] |= static_cast<uint8_t>((u >> 2) << (e / 32));
  }
  store_block(b, p);
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): 8 sub-blocks of 32 with 6-bit scales
// and mins. Writes d, dmin, scales and returns the quants (0..nmax) in q.
void quant_k_affine_32(const float* x, int nmax, uint16_t* d_bits, uint16_t* dmin_bits,
                       uint8_t (&scales)[12], int* q) {
  float scale[8], min[8];
  for (int j = 0; j < 8; ++j) {
    const AffineFit f = fit_affine(x + 32 * j, 32, nmax);
    scale[j] = f.scale;
    min[j] = f.min;
  }
  int ls[8], lm[8];
  *d_bits = quantize_scales_unsigned(scale, 8, 6, ls);
  *dmin_bits = quantize_scales_unsigned(min, 8, 6, lm);
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(ls[j] | ((ls[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<uint8_t>(lm[j] | ((lm[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<uint8_t>((ls[j + 4] & 0x0f) | ((lm[j + 4] & 0x0f) << 4));
  }
  const float d = f16_to_f32(*d_bits);
  const float dmin = f16_to_f32(*dmin_bits);
  for (int j = 0; j < 8; ++j) {
    const float ds = d * static_cast<float>(ls[j]);
    const float dm = dmin * static_cast<float>(lm[j]);
    for (int l = 0; l < 32; ++l) q[32 * j + l] = requant_affine(x[32 * j + l], ds, dm, nmax);
  }
}

void quant_q4_k(const float* x, uint8_t* p) {
  BlockQ4_K b{};
  int q[kQKK];
  quant_k_affine_32(x, 15, &b.d, &b.dmin, b.scales, q);
  for (int j = 0; j < 8; ++j) {
    for (int l = 0; l < 32; ++l) {
      b.qs[(j / 2) * 32 + l] |= static_cast<uint8_t>(q[32 * j + l] << (4 * (j % 2)));
    }
  }
  store_block(b, p);
}

void quant_q5_k(const float* x, uint8_t* p) {
  BlockQ5_K b{};
  int q[kQKK];
  quant_k_affine_32(x, 31, &b.d, &b.dmin, b.scales, q);
  for (int j = 0; j < 8; ++j) {
    for (int l = 0; l < 32; ++l) {
      const int v = q[32 * j + l];
      b.qs[(j / 2) * 32 + l] |= static_cast<uint8_t>((v & 0x0f) << (4 * (j % 2)));
      b.qh[l] |= static_cast<uint8_t>((v >> 4) << j);
    }
  }
  store_block(b, p);
}

void quant_q6_k(const float* x, uint8_t* p) {
  BlockQ6_K b{};
  float scale[16];
  for (int j = 0; j < 16; ++j) scale[j] = fit_symmetric(x + 16 * j, 16, 32, 31);
  int ls[16];
  b.d = quantize_scales_signed(scale, 16, -128, 127, ls);
  const float d = f16_to_f32(b.d);
  for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<int8_t>(ls[j]);
  for (int e = 0; e < kQKK; ++e) {
    const float ds = d * static_cast<float>(ls[e / 16]);
    const int u = requant_symmetric(x[e], ds, 32, 31) + 32;  // 0..63
    const int half_idx = e / 128;
    const int r = e % 128;
    b.ql[half_idx * 64 + r % 64] |= static_cast<uint8_t>((u & 0x0f) << (4 * (r / 64)));
    b.qh[half_idx * 32 + r % 32] |= static_cast<uint8_t>((u >> 4) << (2 * (r / 32)));
  }
  store_block(b, p);
}

using QuantFn = void (*)(const float*, uint8_t*);

QuantFn quant_fn(DType t) {
  switch (t) {
    case DType::F32:
      return quant_f32;
    case DType::F16:
      return quant_f16;
    case DType::BF16:
      return quant_bf16;
    case DType::Q4_0:
      return quant_q4_0;
    case DType::Q4_1:
      return quant_q4_1;
    case DType::Q5_0:
      return quant_q5_0;
    case DType::Q5_1:
      return quant_q5_1;
    case DType::Q8_0:
      return quant_q8_0;
    case DType::Q8_1:
      return quant_q8_1;
    case DType::Q2_K:
      return quant_q2_k;
    case DType::Q3_K:
      return quant_q3_k;
    case DType::Q4_K:
      return quant_q4_k;
    case DType::Q5_K:
      return quant_q5_k;
    case DType::Q6_K:
      return quant_q6_k;
    case DType::Q8_K:
      return quant_q8_k;
  }
  return nullptr;
}

}  // namespace

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  const DTypeInfo info = checked_layout(t, n, "dequantize_row");
  const DequantFn fn = dequant_fn(t);
  if (fn == nullptr) throw UnsupportedError("dequantize_row: no dequantizer for " + type_label(t));
  const auto* p = static_cast<const uint8_t*>(src);
  const int64_t n_block = n / info.block_size;
  for (int64_t i = 0; i < n_block; ++i) fn(p + i * info.type_size, dst + i * info.block_size);
}

double dot_row_ref(DType t, const void* row, const float* x, int64_t n) {
  const DTypeInfo info = checked_layout(t, n, "dot_row_ref");
  const DequantFn fn = dequant_fn(t);
  if (fn == nullptr) throw UnsupportedError("dot_row_ref: no dequantizer for " + type_label(t));
  const auto* p = static_cast<const uint8_t*>(row);
  const int64_t n_block = n / info.block_size;
  float buf[kQKK];  // [block_size]
  double sum = 0.0;
  for (int64_t i = 0; i < n_block; ++i) {
    fn(p + i * info.type_size, buf);
    const float* xb = x + i * info.block_size;
    for (int64_t j = 0; j < info.block_size; ++j) sum += static_cast<double>(buf[j]) * xb[j];
  }
  return sum;
}

void quantize_row_ref(DType t, const float* src, void* dst, int64_t n) {
  const DTypeInfo info = checked_layout(t, n, "quantize_row_ref");
  const QuantFn fn = quant_fn(t);
  if (fn == nullptr) throw UnsupportedError("quantize_row_ref: no quantizer for " + type_label(t));
  auto* p = static_cast<uint8_t*>(dst);
  const int64_t n_block = n / info.block_size;
  for (int64_t i = 0; i < n_block; ++i) fn(src + i * info.block_size, p + i * info.type_size);
}

}  // namespace spillway
