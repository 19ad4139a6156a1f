// Type table, row sizes and the f16/bf16 conversions.
#include "spillway/core/types.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "spillway/core/quant.h"

namespace spillway {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(DTypeTable, NamesAndLayoutsMatchTheBlockStructs) {
  struct Want {
    DType type;
    const char* name;
    int64_t block_size;
    int64_t type_size;
  };
  const Want want[] = {
      {DType::F32, "F32", 1, 4},
      {DType::F16, "F16", 1, 2},
      {DType::BF16, "BF16", 1, 2},
      {DType::Q4_0, "Q4_0", 32, sizeof(BlockQ4_0)},
      {DType::Q4_1, "Q4_1", 32, sizeof(BlockQ4_1)},
      {DType::Q5_0, "Q5_0", 32, sizeof(BlockQ5_0)},
      {DType::Q5_1, "Q5_1", 32, sizeof(BlockQ5_1)},
      {DType::Q8_0, "Q8_0", 32, sizeof(BlockQ8_0)},
      {DType::Q8_1, "Q8_1", 32, sizeof(BlockQ8_1)},
      {DType::Q2_K, "Q2_K", 256, sizeof(BlockQ2_K)},
      {DType::Q3_K, "Q3_K", 256, sizeof(BlockQ3_K)},
      {DType::Q4_K, "Q4_K", 256, sizeof(BlockQ4_K)},
      {DType::Q5_K, "Q5_K", 256, sizeof(BlockQ5_K)},
      {DType::Q6_K, "Q6_K", 256, sizeof(BlockQ6_K)},
      {DType::Q8_K, "Q8_K", 256, sizeof(BlockQ8_K)},
  };
  for (const Want& w : want) {
    SCOPED_TRACE(w.name);
    const DTypeInfo& info = dtype_info(w.type);
    EXPECT_EQ(info.name, w.name);
    EXPECT_EQ(info.block_size, w.block_size);
    EXPECT_EQ(info.type_size, w.type_size);
    EXPECT_EQ(dtype_name(w.type), w.name);
    const auto by_id = dtype_info(static_cast<uint32_t>(w.type));
    ASSERT_TRUE(by_id.has_value());
    EXPECT_EQ(by_id->name, w.name);
    EXPECT_EQ(dtype_from_name(w.name), w.type);
  }
  EXPECT_EQ(static_cast<uint32_t>(DType::BF16), 30u);
  EXPECT_EQ(static_cast<uint32_t>(DType::Q6_K), 14u);
}

TEST(DTypeTable, UnknownIdsAreNotKnown) {
  for (uint32_t id : {4u, 5u, 16u, 29u, 31u, 1000u, 0xffffffffu}) {
    EXPECT_FALSE(dtype_info(id).has_value()) << id;
  }
}

TEST(DTypeTable, NamesParseCaseInsensitively) {
  EXPECT_EQ(dtype_from_name("f16"), DType::F16);
  EXPECT_EQ(dtype_from_name("bf16"), DType::BF16);
  EXPECT_EQ(dtype_from_name("Bf16"), DType::BF16);
  EXPECT_EQ(dtype_from_name("q4_k"), DType::Q4_K);
  EXPECT_EQ(dtype_from_name("q8_0"), DType::Q8_0);
  EXPECT_EQ(dtype_from_name("Q6_k"), DType::Q6_K);
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_FALSE(dtype_from_name("Q4").has_value());
  EXPECT_FALSE(dtype_from_name("Q4_0 ").has_value());
  EXPECT_FALSE(dtype_from_name("Q4_01").has_value());
  EXPECT_FALSE(dtype_from_name("F64").has_value());
  EXPECT_FALSE(dtype_from_name("IQ4_NL").has_value());
}

TEST(RowBytes, MultiplesOfTheBlockSize) {
  EXPECT_EQ(row_bytes(DType::F32, 0), 0u);
  EXPECT_EQ(row_bytes(DType::F32, 7), 28u);
  EXPECT_EQ(row_bytes(DType::F16, 576), 1152u);
  EXPECT_EQ(row_bytes(DType::Q4_1, 32), 20u);
  EXPECT_EQ(row_bytes(DType::Q4_1, 576), 18u * 20u);
  EXPECT_EQ(row_bytes(DType::Q8_0, 576), 18u * 34u);
  EXPECT_EQ(row_bytes(DType::Q6_K, 512), 420u);
  EXPECT_EQ(row_bytes(DType::Q8_K, 256), 292u);
  EXPECT_EQ(row_bytes(DType::Q4_0, 0), 0u);
}

TEST(RowBytes, RejectsPartialBlocks) {
  EXPECT_FALSE(row_bytes(DType::Q4_1, 1).has_value());
  EXPECT_FALSE(row_bytes(DType::Q4_1, 33).has_value());
  EXPECT_FALSE(row_bytes(DType::Q4_K, 128).has_value());
  EXPECT_FALSE(row_bytes(DType::Q4_K, 257).has_value());
  EXPECT_FALSE(row_bytes(DType::Q8_0, 575).has_value());
}

TEST(RowBytes, RejectsOverflow) {
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(row_bytes(DType::F32, uint64_t{1} << 61), uint64_t{1} << 63);
  EXPECT_FALSE(row_bytes(DType::F32, uint64_t{1} << 62).has_value());
  EXPECT_FALSE(row_bytes(DType::F16, uint64_t{1} << 63).has_value());
  EXPECT_EQ(row_bytes(DType::F16, (uint64_t{1} << 63) - 1), max - 1);
  // The largest block count whose bytes fit: floor(max / 34) blocks of Q8_0.
  const uint64_t n_block = max / 34;
  EXPECT_EQ(row_bytes(DType::Q8_0, n_block * 32), n_block * 34);
  EXPECT_FALSE(row_bytes(DType::Q8_0, (n_block + 1) * 32).has_value());
  EXPECT_TRUE(row_bytes(DType::Q6_K, max - max % 256).has_value());   // 210 < 256 bytes per block
  EXPECT_FALSE(row_bytes(DType::Q8_K, max - max % 256).has_value());  // 292 > 256
  EXPECT_FALSE(row_bytes(static_cast<DType>(77), 32).has_value());
}

// The value of half h, computed independently in double.
double half_value(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0) return sign * std::ldexp(static_cast<double>(mant), -24);
  if (exp == 31)
    return mant ? std::numeric_limits<double>::quiet_NaN()
                : sign * std::numeric_limits<double>::infinity();
  return sign * std::ldexp(1.0 + mant / 1024.0, exp - 15);
}

TEST(F16, AllHalvesConvertExactlyAndRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto hb = static_cast<uint16_t>(h);
    const float f = f16_to_f32(hb);
    const double want = half_value(hb);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      EXPECT_EQ(bits_of(f) >> 31, h >> 15) << std::hex << h;
      const uint16_t back = f32_to_f16(f);
      EXPECT_EQ(back & 0x7c00, 0x7c00) << std::hex << h;
      EXPECT_NE(back & 0x3ff, 0) << std::hex << h;
      EXPECT_EQ(back & 0x8000, h & 0x8000) << std::hex << h;
      // A quiet NaN keeps its payload.
      if (h & 0x200) {
        EXPECT_EQ(back, hb) << std::hex << h;
      }
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h >> 15) != 0) << std::hex << h;
    ASSERT_EQ(f32_to_f16(f), hb) << std::hex << h;
  }
}

TEST(F16, SpecialCases) {
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // tie between 65504 and 2^16 goes to even: inf
  EXPECT_EQ(f32_to_f16(-65520.0f), 0xfc00);
  EXPECT_EQ(f32_to_f16(1e30f), 0x7c00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  const uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x3ff, 0);
  // A signalling NaN whose payload lives only in the low 13 bits stays a NaN.
  const uint16_t snan = f32_to_f16(from_bits(0x7f800001u));
  EXPECT_EQ(snan & 0x7c00, 0x7c00);
  EXPECT_NE(snan & 0x3ff, 0);
  EXPECT_EQ(f32_to_f16(from_bits(0xff800001u)) & 0x8000, 0x8000);
  // Ties to even in the normal range.
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
  EXPECT_EQ(f32_to_f16(2049.0f), 0x6800);  // 2048 (even)
  EXPECT_EQ(f32_to_f16(2051.0f), 0x6802);  // 2052 (even)
  // Subnormals: m * 2^-24.
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_f16(-0x1p-24f), 0x8001);
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);  // tie with zero: even
  EXPECT_EQ(f32_to_f16(-0x1p-25f), 0x8000);
  EXPECT_EQ(f32_to_f16(from_bits(bits_of(0x1p-25f) + 1)), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);  // 1.5 ulp: tie to even 2
  EXPECT_EQ(f32_to_f16(5 * 0x1p-25f), 0x0002);  // 2.5 ulp: tie to even 2
  EXPECT_EQ(f32_to_f16(0x1p-26f), 0x0000);
  EXPECT_EQ(f32_to_f16(1e-10f), 0x0000);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400);  // 1023.5 ulp: tie rounds up to even
  EXPECT_EQ(f32_to_f16(0x1p-14f - 0x1p-24f), 0x03ff);
  EXPECT_EQ(f32_to_f16(0x1p-14f - 3 * 0x1p-25f), 0x03fe);  // 1022.5 ulp: even 1022
}

// Nearest half of f in double arithmetic, ties to even, as a float (independent of the
// bit manipulation under test). Finite f only.
double nearest_half(float f) {
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return std::copysign(std::numeric_limits<double>::infinity(), f);
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  const int quantum_exp = std::max(e - 11, -24);
  const double q = std::ldexp(a, -quantum_exp);  // exact
  const double r = std::nearbyint(q);            // ties to even (default mode)
  return std::copysign(std::ldexp(r, quantum_exp), f);
}

TEST(F16, RandomFloatsRoundToNearestEven) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> sign_mant(0, 0xffffffffu);
  // Exponents from far below the subnormal halves to past the largest half.
  std::uniform_int_distribution<uint32_t> exp_dist(127 - 30, 127 + 17);
  for (int i = 0; i < 2000000; ++i) {
    const uint32_t r = sign_mant(rng);
    // Low mantissa bits often zero, so ties appear.
    uint32_t mant = r & 0x7fffffu;
    if (i % 3 == 0) mant &= ~0xfffu;
    if (i % 3 == 1) mant = (mant & ~0x1fffu) | 0x1000u;
    const uint32_t u = (r & 0x80000000u) | (exp_dist(rng) << 23) | mant;
    const float f = from_bits(u);
    const double want = nearest_half(f);
    const float got = f16_to_f32(f32_to_f16(f));
    ASSERT_EQ(static_cast<double>(got), want) << std::hexfloat << f;
    ASSERT_EQ(std::signbit(got), std::signbit(f)) << std::hexfloat << f;
  }
}

TEST(BF16, AllValuesRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto hb = static_cast<uint16_t>(h);
    const float f = bf16_to_f32(hb);
    EXPECT_EQ(bits_of(f), h << 16);
    const uint16_t back = f32_to_bf16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_f32(back))) << std::hex << h;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << std::hex << h;
    } else {
      ASSERT_EQ(back, hb) << std::hex << h;
    }
  }
}

TEST(BF16, RoundsToNearestEvenAndKeepsNaN) {
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);  // tie: even
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);  // tie: even (up)
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f807fffu)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0xbf80ffffu)), 0xbf81);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7f7fffffu)), 0x7f80);  // past the largest: inf
  EXPECT_EQ(f32_to_bf16(from_bits(0xff7fffffu)), 0xff80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x00000001u)), 0x0000);  // subnormals round too
  EXPECT_EQ(f32_to_bf16(from_bits(0x00018000u)), 0x0002);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  // NaNs whose payload sits only in the discarded half stay NaN.
  for (uint32_t u : {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu, 0x7f80ffffu}) {
    const uint16_t b = f32_to_bf16(from_bits(u));
    EXPECT_TRUE(std::isnan(bf16_to_f32(b))) << std::hex << u;
    EXPECT_EQ(b >> 15, u >> 31) << std::hex << u;
  }
}

}  // namespace
}  // namespace spillway
