// Quantized block formats against golden files from the gguf package
// (scripts/make-golden-quants.py), plus round-trip error bounds of the reference
// quantizers.
#include "spillway/core/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "spillway/core/error.h"
#include "util/paths.h"

namespace spillway {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

uint32_t read_u32(const std::vector<uint8_t>& b, size_t off) {
  return static_cast<uint32_t>(b[off]) | static_cast<uint32_t>(b[off + 1]) << 8 |
         static_cast<uint32_t>(b[off + 2]) << 16 | static_cast<uint32_t>(b[off + 3]) << 24;
}

// One golden file: n_row rows of n_per_row elements; `blocks` holds the rows' raw block
// bytes, `values` the floats (dequantized expectation, or quantizer input).
struct Golden {
  DType type;
  int64_t n_row = 0;
  int64_t n_per_row = 0;
  size_t row_size = 0;          // bytes per row
  std::vector<uint8_t> blocks;  // [n_row][row_size]
  std::vector<float> values;    // [n_row][n_per_row]
};

Golden load_golden(const std::string& kind, DType t) {
  const std::string path =
      test::source_path("tests/golden/quants/" + kind + "_" + std::string(dtype_name(t)) + ".bin");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (bytes.size() < 16) throw std::runtime_error(path + ": too short");
  const std::string magic(bytes.begin(), bytes.begin() + 4);
  if (magic != (kind == "deq" ? "SWQD" : "SWQQ")) throw std::runtime_error(path + ": bad magic");
  Golden g;
  g.type = t;
  if (read_u32(bytes, 4) != static_cast<uint32_t>(t)) throw std::runtime_error(path + ": type");
  g.n_row = read_u32(bytes, 8);
  g.n_per_row = read_u32(bytes, 12);
  g.row_size = *row_bytes(t, g.n_per_row);
  const size_t n_val = g.n_row * g.n_per_row;
  const size_t n_blk = g.n_row * g.row_size;
  if (bytes.size() != 16 + n_val * 4 + n_blk) throw std::runtime_error(path + ": size");
  g.values.resize(n_val);
  g.blocks.resize(n_blk);
  if (kind == "deq") {
    std::memcpy(g.blocks.data(), bytes.data() + 16, n_blk);
    std::memcpy(g.values.data(), bytes.data() + 16 + n_blk, n_val * 4);
  } else {
    std::memcpy(g.values.data(), bytes.data() + 16, n_val * 4);
    std::memcpy(g.blocks.data(), bytes.data() + 16 + n_val * 4, n_blk);
  }
  return g;
}

const DType kAllTypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1,
                           DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q8_1, DType::Q2_K,
                           DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K};

class QuantGolden : public ::testing::TestWithParam<DType> {};

// dequantize_row(src at byte offset `shift` of a copy) equals the golden floats bit for bit.
void expect_dequant_matches(const Golden& g, size_t shift) {
  std::vector<uint8_t> buf(g.row_size + 8);
  std::vector<float> out(g.n_per_row);
  for (int64_t r = 0; r < g.n_row; ++r) {
    std::memcpy(buf.data() + shift, g.blocks.data() + r * g.row_size, g.row_size);
    dequantize_row(g.type, buf.data() + shift, out.data(), g.n_per_row);
    for (int64_t i = 0; i < g.n_per_row; ++i) {
      const float want = g.values[r * g.n_per_row + i];
      ASSERT_EQ(bits_of(out[i]), bits_of(want))
          << dtype_name(g.type) << " row " << r << " element " << i << " (shift " << shift
          << "): got " << out[i] << ", want " << want;
    }
  }
}

TEST_P(QuantGolden, DequantizeIsBitExact) {
  const Golden g = load_golden("deq", GetParam());
  ASSERT_GT(g.n_row, 0);
  expect_dequant_matches(g, 0);
}

TEST_P(QuantGolden, DequantizeFromMisalignedSource) {
  const Golden g = load_golden("deq", GetParam());
  for (size_t shift : {1u, 2u, 3u, 5u}) expect_dequant_matches(g, shift);
}

TEST_P(QuantGolden, DotMatchesDoubleDotOfGoldenFloats) {
  const Golden g = load_golden("deq", GetParam());
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(g.n_per_row);
  for (float& v : x) v = dist(rng);
  std::vector<uint8_t> buf(g.row_size + 1);
  for (int64_t r = 0; r < g.n_row; ++r) {
    double want = 0.0, scale = 0.0;
    for (int64_t i = 0; i < g.n_per_row; ++i) {
      const double term = static_cast<double>(g.values[r * g.n_per_row + i]) * x[i];
      want += term;
      scale += std::fabs(term);
    }
    std::memcpy(buf.data() + 1, g.blocks.data() + r * g.row_size, g.row_size);  // odd address
    const double got = dot_row_ref(g.type, buf.data() + 1, x.data(), g.n_per_row);
    if (std::isfinite(want)) {
      EXPECT_NEAR(got, want, 1e-12 * scale) << dtype_name(g.type) << " row " << r;
    } else {
      EXPECT_EQ(std::isnan(got), std::isnan(want)) << dtype_name(g.type) << " row " << r;
      if (!std::isnan(want)) {
        EXPECT_EQ(got, want) << dtype_name(g.type) << " row " << r;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, QuantGolden, ::testing::ValuesIn(kAllTypes),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

class QuantizeGolden : public ::testing::TestWithParam<DType> {};

// The gguf package's quantizers follow ggml's reference rounding; ours must agree byte
// for byte (zero, constant and single-value blocks included).
TEST_P(QuantizeGolden, QuantizeIsByteExact) {
  const Golden g = load_golden("quant", GetParam());
  const DTypeInfo& info = dtype_info(g.type);
  std::vector<uint8_t> out(g.row_size);
  for (int64_t r = 0; r < g.n_row; ++r) {
    quantize_row_ref(g.type, g.values.data() + r * g.n_per_row, out.data(), g.n_per_row);
    const uint8_t* want = g.blocks.data() + r * g.row_size;
    for (size_t i = 0; i < g.row_size; ++i) {
      ASSERT_EQ(out[i], want[i]) << dtype_name(g.type) << " row " << r << " block "
                                 << i / info.type_size << " byte " << i % info.type_size;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(GgufQuantizers, QuantizeGolden,
                         ::testing::Values(DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1,
                                           DType::Q5_0, DType::Q5_1, DType::Q8_0),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Seeded test input: Gaussian values with per-32 magnitudes over four decades, a few
// outliers, a zero block and a constant block.
std::vector<float> test_input(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::uniform_real_distribution<float> decade(-3.0f, 1.0f);
  std::vector<float> x(n);
  for (int64_t b = 0; b < n / 32; ++b) {
    const float mag = std::pow(10.0f, decade(rng));
    for (int j = 0; j < 32; ++j) x[b * 32 + j] = dist(rng) * mag;
    if (b % 7 == 3) x[b * 32 + (b % 32)] *= 8.0f;  // outlier
  }
  for (int j = 0; j < 32 && n >= 512; ++j) {
    x[256 + j] = 0.0f;
    x[288 + j] = -0.75f;
  }
  return x;
}

std::vector<float> round_trip(DType t, const std::vector<float>& x) {
  const auto n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> q(*row_bytes(t, n));
  quantize_row_ref(t, x.data(), q.data(), n);
  std::vector<float> y(n);
  dequantize_row(t, q.data(), y.data(), n);
  return y;
}

float block_absmax(const std::vector<float>& x, int64_t b, int bs) {
  float m = 0.0f;
  for (int j = 0; j < bs; ++j) m = std::max(m, std::fabs(x[b * bs + j]));
  return m;
}

TEST(QuantizeRoundTrip, PlainTypes) {
  const std::vector<float> x = test_input(1024, 7);
  const std::vector<float> y32 = round_trip(DType::F32, x);
  const std::vector<float> y16 = round_trip(DType::F16, x);
  const std::vector<float> yb16 = round_trip(DType::BF16, x);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(bits_of(y32[i]), bits_of(x[i]));
    // Half: relative 2^-11 in the normal range, absolute 2^-25 in the subnormal one.
    EXPECT_LE(std::fabs(y16[i] - x[i]), std::max(std::fabs(x[i]) * 0x1p-11f, 0x1p-25f)) << i;
    EXPECT_LE(std::fabs(yb16[i] - x[i]), std::fabs(x[i]) * 0x1p-8f) << i;
  }
}

// Per-element bound for the legacy and Q8_K quantizers, as a function of the block's
// largest magnitude (amax) and value range. The f16 rounding of the scale (relative
// 2^-11, times at most 2^5 quant steps) adds the small extra terms.
TEST(QuantizeRoundTrip, LegacyTypesStayWithinTheirStep) {
  const std::vector<float> x = test_input(2048, 11);
  struct Case {
    DType type;
    int bs;
  };
  for (const Case c :
       {Case{DType::Q4_0, 32}, Case{DType::Q4_1, 32}, Case{DType::Q5_0, 32}, Case{DType::Q5_1, 32},
        Case{DType::Q8_0, 32}, Case{DType::Q8_1, 32}, Case{DType::Q8_K, 256}}) {
    SCOPED_TRACE(std::string(dtype_name(c.type)));
    const std::vector<float> y = round_trip(c.type, x);
    for (int64_t b = 0; b < static_cast<int64_t>(x.size()) / c.bs; ++b) {
      const float amax = block_absmax(x, b, c.bs);
      float lo = x[b * c.bs], hi = lo;
      for (int j = 0; j < c.bs; ++j) {
        lo = std::min(lo, x[b * c.bs + j]);
        hi = std::max(hi, x[b * c.bs + j]);
      }
      float bound = 0.0f;
      switch (c.type) {
        case DType::Q4_0:
          bound = amax / 8 * (1.0f + 8 * 0x1p-10f);
          break;  // top code clips
        case DType::Q5_0:
          bound = amax / 16 * (1.0f + 16 * 0x1p-10f);
          break;
        case DType::Q4_1:
          bound = (hi - lo) / 15 * (0.5f + 15 * 0x1p-10f) + std::fabs(lo) * 0x1p-10f;
          break;
        case DType::Q5_1:
          bound = (hi - lo) / 31 * (0.5f + 31 * 0x1p-10f) + std::fabs(lo) * 0x1p-10f;
          break;
        case DType::Q8_0:
        case DType::Q8_1:
          bound = amax / 127 * 0.5f + amax * 0x1p-10f;
          break;
        default:
          bound = amax / 127 * 0.501f;
          break;  // Q8_K: f32 scale
      }
      for (int j = 0; j < c.bs; ++j) {
        const int64_t i = b * c.bs + j;
        ASSERT_LE(std::fabs(y[i] - x[i]), bound) << "block " << b << " element " << j;
      }
    }
  }
}

// K types: relative RMS error over many blocks of Gaussian data. Measured: Q2_K 0.271,
// Q3_K 0.144, Q4_K 0.0715, Q5_K 0.0359, Q6_K 0.0169, Q8_K 0.0070, Q8_0 0.0054; the
// bounds leave about 30% headroom.
TEST(QuantizeRoundTrip, KTypesRelativeRmsError) {
  struct Case {
    DType type;
    double max_rel_rms;
  };
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(256 * 64);
  for (float& v : x) v = dist(rng);
  for (const Case c : {Case{DType::Q2_K, 0.40}, Case{DType::Q3_K, 0.20}, Case{DType::Q4_K, 0.095},
                       Case{DType::Q5_K, 0.048}, Case{DType::Q6_K, 0.024}, Case{DType::Q8_K, 0.009},
                       Case{DType::Q8_0, 0.0075}}) {
    const std::vector<float> y = round_trip(c.type, x);
    double se = 0.0, ss = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      se += static_cast<double>(y[i] - x[i]) * (y[i] - x[i]);
      ss += static_cast<double>(x[i]) * x[i];
    }
    const double rel = std::sqrt(se / ss);
    EXPECT_LT(rel, c.max_rel_rms) << dtype_name(c.type);
    RecordProperty(std::string(dtype_name(c.type)) + "_rel_rms", std::to_string(rel));
  }
}

// The same K quantizers on the uneven test input: per 256-block relative error, so a
// block of tiny values next to a block of large ones is still quantized well.
TEST(QuantizeRoundTrip, KTypesPerBlockOnUnevenInput) {
  const std::vector<float> x = test_input(256 * 16, 5);
  struct Case {
    DType type;
    double max_rel_rms;
  };
  for (const Case c : {Case{DType::Q2_K, 0.6}, Case{DType::Q3_K, 0.35}, Case{DType::Q4_K, 0.15},
                       Case{DType::Q5_K, 0.08}, Case{DType::Q6_K, 0.05}}) {
    const std::vector<float> y = round_trip(c.type, x);
    for (size_t b = 0; b < x.size() / 256; ++b) {
      double se = 0.0, ss = 0.0;
      for (size_t j = b * 256; j < (b + 1) * 256; ++j) {
        se += static_cast<double>(y[j] - x[j]) * (y[j] - x[j]);
        ss += static_cast<double>(x[j]) * x[j];
      }
      if (ss == 0.0) {
        EXPECT_EQ(se, 0.0) << dtype_name(c.type) << " block " << b;
      } else {
        EXPECT_LT(std::sqrt(se / ss), c.max_rel_rms) << dtype_name(c.type) << " block " << b;
      }
    }
  }
}

TEST(QuantizeRoundTrip, ZeroRowsStayZero) {
  for (DType t : kAllTypes) {
    const std::vector<float> x(512, 0.0f);
    const std::vector<float> y = round_trip(t, x);
    for (float v : y) ASSERT_EQ(v, 0.0f) << dtype_name(t);
  }
}

TEST(QuantizeRoundTrip, ConstantBlocksAreNearlyExact) {
  for (DType t : kAllTypes) {
    for (float c : {1.5f, -0.02f}) {
      const std::vector<float> x(512, c);
      const std::vector<float> y = round_trip(t, x);
      for (float v : y) ASSERT_NEAR(v, c, std::fabs(c) * 0.01f) << dtype_name(t) << " " << c;
    }
  }
}

TEST(QuantizeFields, Q8_1SumAndQ8_KBlockSums) {
  const std::vector<float> x = test_input(512, 9);
  std::vector<BlockQ8_1> q1(512 / 32);
  quantize_row_ref(DType::Q8_1, x.data(), q1.data(), 512);
  for (const BlockQ8_1& b : q1) {
    int sum = 0;
    for (int8_t v : b.qs) sum += v;
    const float d = block_absmax(x, &b - q1.data(), 32) / 127.0f;  // before f16 rounding
    EXPECT_EQ(b.s, f32_to_f16(static_cast<float>(sum) * d));
    EXPECT_EQ(b.d, f32_to_f16(d));
  }
  std::vector<BlockQ8_K> qk(2);
  quantize_row_ref(DType::Q8_K, x.data(), qk.data(), 512);
  for (const BlockQ8_K& b : qk) {
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b.qs[g * 16 + l];
      EXPECT_EQ(b.bsums[g], sum);
    }
  }
}

TEST(QuantErrors, UnknownTypeThrowsUnsupportedNamingIt) {
  const auto bad = static_cast<DType>(21);
  std::vector<float> x(256, 1.0f);
  std::vector<uint8_t> buf(4096);
  try {
    dequantize_row(bad, buf.data(), x.data(), 256);
    FAIL() << "no exception";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("21"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dot_row_ref(bad, buf.data(), x.data(), 256), UnsupportedError);
  EXPECT_THROW(quantize_row_ref(bad, x.data(), buf.data(), 256), UnsupportedError);
}

TEST(QuantErrors, PartialBlocksAreInvalidArguments) {
  std::vector<float> x(256, 1.0f);
  std::vector<uint8_t> buf(4096);
  try {
    dequantize_row(DType::Q4_K, buf.data(), x.data(), 100);
    FAIL() << "no exception";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("Q4_K"), std::string::npos) << msg;
    EXPECT_NE(msg.find("100"), std::string::npos) << msg;
    EXPECT_NE(msg.find("256"), std::string::npos) << msg;
  }
  EXPECT_THROW(dot_row_ref(DType::Q8_0, buf.data(), x.data(), 33), InvalidArgument);
  EXPECT_THROW(quantize_row_ref(DType::Q4_0, x.data(), buf.data(), 31), InvalidArgument);
  EXPECT_THROW(quantize_row_ref(DType::F32, x.data(), buf.data(), -1), InvalidArgument);
  EXPECT_NO_THROW(dequantize_row(DType::Q4_0, buf.data(), x.data(), 0));
  EXPECT_EQ(dot_row_ref(DType::Q6_K, buf.data(), x.data(), 0), 0.0);
}

}  // namespace
}  // namespace spillway
