// Type table of the GGUF tensor element types and the IEEE half / bfloat16 conversions.
#include "spillway/core/types.h"

#include <array>
#include <cassert>
#include <limits>

namespace spillway {

namespace {

struct Entry {
  DType type;
  DTypeInfo info;
};

// Block sizes and byte sizes as ggml lays the blocks out (see core/quant.h).
constexpr std::array<Entry, 15> kTable = {{
    {DType::F32, {"F32", 1, 4}},
    {DType::F16, {"F16", 1, 2}},
    {DType::Q4_0, {"Q4_0", 32, 18}},
    {DType::Q4_1, {"Q4_1", 32, 20}},
    {DType::Q5_0, {"Q5_0", 32, 22}},
    {DType::Q5_1, {"Q5_1", 32, 24}},
    {DType::Q8_0, {"Q8_0", 32, 34}},
    {DType::Q8_1, {"Q8_1", 32, 36}},
    {DType::Q2_K, {"Q2_K", 256, 84}},
    {DType::Q3_K, {"Q3_K", 256, 110}},
    {DType::Q4_K, {"Q4_K", 256, 144}},
    {DType::Q5_K, {"Q5_K", 256, 176}},
    {DType::Q6_K, {"Q6_K", 256, 210}},
    {DType::Q8_K, {"Q8_K", 256, 292}},
    {DType::BF16, {"BF16", 1, 2}},
}};

const Entry* find_entry(uint32_t id) {
  for (const Entry& e : kTable) {
    if (static_cast<uint32_t>(e.type) == id) return &e;
  }
  return nullptr;
}

char ascii_upper(char c) {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
}

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

std::optional<DTypeInfo> dtype_info(uint32_t id) {
  const Entry* e = find_entry(id);
  if (e == nullptr) return std::nullopt;
  return e->info;
}

const DTypeInfo& dtype_info(DType t) {
  const Entry* e = find_entry(static_cast<uint32_t>(t));
  assert(e != nullptr && "dtype_info: DType value outside the table");
  return e->info;
}

std::string_view dtype_name(DType t) {
  const Entry* e = find_entry(static_cast<uint32_t>(t));
  return e == nullptr ? std::string_view("?") : e->info.name;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const Entry& e : kTable) {
    const std::string_view want = e.info.name;
    if (want.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < want.size() && same; ++i) same = ascii_upper(name[i]) == want[i];
    if (same) return e.type;
  }
  return std::nullopt;
}

std::optional<uint64_t> row_bytes(DType t, uint64_t n) {
  const Entry* e = find_entry(static_cast<uint32_t>(t));
  if (e == nullptr) return std::nullopt;
  const uint64_t block_size = static_cast<uint64_t>(e->info.block_size);
  const uint64_t type_size = static_cast<uint64_t>(e->info.type_size);
  if (n % block_size != 0) return std::nullopt;
  const uint64_t n_block = n / block_size;
  if (n_block > std::numeric_limits<uint64_t>::max() / type_size) return std::nullopt;
  return n_block * type_size;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {
    // Inf or NaN: keep the payload (NaN stays NaN since mant != 0).
    return bits_float(sign | 0x7f800000u | (mant << 13));
  }
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal: value = mant * 2^-24; normalize so the leading one becomes implicit.
  int e = 113;  // biased f32 exponent of 2^-14
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  mant &= 0x3ffu;
  return bits_float(sign | (static_cast<uint32_t>(e) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {
    // NaN: quiet it and keep the top payload bits.
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  // 65520 (0x477ff000) is halfway between 65504 (odd mantissa) and 2^16: ties go to inf.
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs < 0x38800000u) {
    // Below the smallest normal half 2^-14: the result is a subnormal m * 2^-24 (or 0).
    // At most 2^-25, which rounds to even zero.
    if (abs <= 0x33000000u) return sign;
    const uint32_t exp = abs >> 23;  // 102..112
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // 14..24
    uint32_t m = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (m & 1u) != 0)) ++m;  // m may become 0x400: 2^-14
    return static_cast<uint16_t>(sign | m);
  }
  // Normal: rebias the exponent (127 -> 15) and round the low 13 mantissa bits to
  // nearest even; a carry out of the mantissa correctly bumps the exponent.
  const uint32_t rebased = abs - 0x38000000u;
  const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

uint16_t f32_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    // NaN: truncate and force the quiet bit so a payload in the low half cannot vanish.
    return static_cast<uint16_t>((u >> 16) | 0x40u);
  }
  // Round to nearest even; overflow past the largest finite value correctly gives inf.
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace spillway
