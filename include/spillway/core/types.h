// Tensor element types as GGUF numbers them, their block layouts' sizes, and f16/bf16
// conversions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace spillway {

// Values are the GGUF/ggml type ids stored in tensor infos.
enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

struct DTypeInfo {
  std::string_view name;  // "Q4_1"
  int64_t block_size;     // elements per block (1 for plain types)
  int64_t type_size;      // bytes per block
};

// Layout of a known type, or nullopt for an id this build does not know.
std::optional<DTypeInfo> dtype_info(uint32_t id);
// Layout of a known type (precondition: known).
const DTypeInfo& dtype_info(DType t);
std::string_view dtype_name(DType t);
// Parses "Q4_1", "f16", ... (case-insensitive).
std::optional<DType> dtype_from_name(std::string_view name);

// Bytes of a row of n elements; nullopt when n is not a multiple of the block size or
// the byte count would overflow.
std::optional<uint64_t> row_bytes(DType t, uint64_t n);

// IEEE half and bfloat16 conversions (round to nearest even; NaN stays NaN).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_bf16(float f);

}  // namespace spillway
