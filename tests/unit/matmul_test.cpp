// Quantized matrix products: every kernel family against the scalar reference of the same
// quantized math, and against dot_row_ref (f32 activations) within the error bound of
// the 8-bit activation quantization.
#include "spillway/ops/matmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ops/kernels.h"
#include "spillway/core/error.h"
#include "spillway/core/quant.h"
#include "spillway/core/thread_pool.h"
#include "spillway/core/types.h"
#include "spillway/ops/ops.h"
#include "util/families.h"

namespace spillway::ops {
namespace {

constexpr DType kAllTypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1,
                               DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q8_1, DType::Q2_K,
                               DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

// Byte offsets of the f16 scale fields of each block type (the rest of a block may hold
// any bits).
std::vector<int> f16_fields(DType t) {
  switch (t) {
    case DType::Q4_0:
    case DType::Q5_0:
    case DType::Q8_0:
      return {0};
    case DType::Q4_1:
    case DType::Q5_1:
    case DType::Q8_1:
      return {0, 2};
    case DType::Q2_K:
      return {80, 82};
    case DType::Q3_K:
      return {108};
    case DType::Q4_K:
    case DType::Q5_K:
      return {0, 2};
    case DType::Q6_K:
      return {208};
    default:
      return {};
  }
}

bool is_block_type(DType t) {
  return dtype_info(t).block_size > 1;
}

// A weight matrix held at an odd address so that no kernel can rely on alignment.
struct TestMatrix {
  std::vector<uint8_t> storage;
  WeightMatrix w;
  std::vector<float> dense;  // [rows][cols] dequantized
};

TestMatrix make_matrix(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  TestMatrix m;
  const uint64_t rb = *row_bytes(t, static_cast<uint64_t>(cols));
  m.storage.resize(rb * static_cast<uint64_t>(rows) + 1);
  uint8_t* data = m.storage.data() + 1;
  if (is_block_type(t)) {
    // Random bits everywhere (every scale / high-bit pattern), then sane f16 scales.
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(0.002f, 0.02f);
    for (uint64_t i = 0; i < rb * static_cast<uint64_t>(rows); ++i) {
      data[i] = static_cast<uint8_t>(byte(rng));
    }
    const auto& info = dtype_info(t);
    const int64_t nblocks = rows * cols / info.block_size;
    for (int64_t b = 0; b < nblocks; ++b) {
      for (int off : f16_fields(t)) {
        const uint16_t h = f32_to_f16(scale(rng) * ((rng() & 1) && off > 0 ? -1.0f : 1.0f));
        std::memcpy(data + b * info.type_size + off, &h, 2);
      }
    }
  } else {
    std::normal_distribution<float> nd(0.0f, 0.5f);
    std::vector<float> src(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (auto& v : src) v = nd(rng);
      quantize_row_ref(t, src.data(), data + r * rb, cols);
    }
  }
  m.w = WeightMatrix{t, data, rows, cols, rb};
  m.dense.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t, data + r * rb, &m.dense[r * cols], cols);
  return m;
}

// T x cols activations at an address that is 4 bytes off any 32-byte alignment.
struct TestActs {
  std::vector<float> storage;
  float* x;
};

TestActs make_acts(int64_t T, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  TestActs a;
  a.storage.resize(static_cast<size_t>(T * cols + 8));
  a.x = a.storage.data() + 1;
  for (int64_t i = 0; i < T * cols; ++i) a.x[i] = nd(rng);
  // A few outliers, as real activations have.
  for (int64_t t = 0; t < T; ++t) a.x[t * cols + (t * 7) % cols] *= 8.0f;
  return a;
}

int64_t cols_for(DType t) {
  return dtype_info(t).block_size == kQKK ? 512 : 224;
}

// sum_i |w_i x_i| of row r, token t: the scale of float rounding errors.
double magnitude(const TestMatrix& m, const float* x, int64_t r) {
  double s = 0.0;
  for (int64_t i = 0; i < m.w.cols; ++i) s += std::fabs(m.dense[r * m.w.cols + i] * x[i]);
  return s;
}

// Bound on |W x - W q(x)| from rounding x to 8-bit blocks of `block` elements with step
// d = amax / 127: each element moves by at most d / 2.
double quantization_bound(const TestMatrix& m, const float* x, int64_t r, int64_t block) {
  double bound = 0.0;
  for (int64_t b0 = 0; b0 < m.w.cols; b0 += block) {
    double amax = 0.0, wsum = 0.0;
    for (int64_t i = b0; i < b0 + block; ++i) {
      amax = std::max(amax, static_cast<double>(std::fabs(x[i])));
      wsum += std::fabs(m.dense[r * m.w.cols + i]);
    }
    bound += wsum * amax / 127.0 / 2.0;
  }
  return bound;
}

int64_t activation_block(DType t) {
  if (!has_integer_kernel(t)) return 0;
  return dtype_info(t).block_size == kQKK ? kQKK : kQK;
}

class MatmulTypes : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulTypes, EveryFamilyMatchesScalarReference) {
  const DType t = GetParam();
  const int64_t cols = cols_for(t);
  uint32_t seed = 1;
  for (int64_t rows : {1, 3, 17, 129}) {
    const TestMatrix m = make_matrix(t, rows, cols, seed++);
    for (int64_t T : {1, 2, 5, 33}) {
      const TestActs a = make_acts(T, cols, seed++);
      Activations acts;
      acts.set(a.x, T, cols);
      ThreadPool one(1);
      std::vector<float> ref(static_cast<size_t>(T * rows));
      matmul_with(KernelIsa::kScalar, m.w, acts, ref.data(), rows, one);
      for (KernelIsa isa : available_isas()) {
        for (int threads : {1, 3}) {
          ThreadPool pool(threads);
          std::vector<float> y(static_cast<size_t>(T * rows), NAN);
          Activations fresh;  // quantized under this pool
          fresh.set(a.x, T, cols);
          matmul_with(isa, m.w, fresh, y.data(), rows, pool);
          for (int64_t tt = 0; tt < T; ++tt) {
            for (int64_t r = 0; r < rows; ++r) {
              const double mag = magnitude(m, a.x + tt * cols, r);
              ASSERT_NEAR(y[tt * rows + r], ref[tt * rows + r], 1e-5 * mag + 1e-30)
                  << dtype_name(t) << " " << isa_name(isa) << " rows " << rows << " T " << T
                  << " threads " << threads << " at (" << tt << ", " << r << ")";
            }
          }
        }
      }
    }
  }
}

void tokens_in_a_batch_get_the_bits_of_single_token_products(DType t);

// Decode computes one token at a time, prefill and chunked evaluation many: the model's
// prefill == decode guarantee rests on every family giving each token the same bits
// whatever the tile shape, the thread count and the token split.
TEST(Matmul, TokensInABatchGetTheBitsOfSingleTokenProducts) {
  for (DType t : kAllTypes) {
    if (has_integer_kernel(t)) tokens_in_a_batch_get_the_bits_of_single_token_products(t);
  }
}

void tokens_in_a_batch_get_the_bits_of_single_token_products(DType t) {
  SCOPED_TRACE(dtype_name(t));
  const int64_t cols = cols_for(t);
  uint32_t seed = 300;
  for (int64_t rows : {5, 13, 40, 131}) {
    const TestMatrix m = make_matrix(t, rows, cols, seed++);
    const int64_t T = 11;
    const TestActs a = make_acts(T, cols, seed++);
    for (KernelIsa isa : available_isas()) {
      for (int threads : {1, 2, 3}) {
        ThreadPool pool(threads);
        Activations batch;
        batch.set(a.x, T, cols);
        std::vector<float> yb(static_cast<size_t>(T * rows));
        matmul_with(isa, m.w, batch, yb.data(), rows, pool);
        for (int64_t tt = 0; tt < T; ++tt) {
          Activations one;
          one.set(a.x + tt * cols, 1, cols);
          std::vector<float> y1(static_cast<size_t>(rows));
          matmul_with(isa, m.w, one, y1.data(), rows, pool);
          for (int64_t r = 0; r < rows; ++r) {
            ASSERT_EQ(std::memcmp(&y1[r], &yb[tt * rows + r], sizeof(float)), 0)
                << dtype_name(t) << " " << isa_name(isa) << " rows " << rows << " threads "
                << threads << " at (" << tt << ", " << r << "): " << y1[r] << " vs "
                << yb[tt * rows + r];
          }
        }
      }
    }
  }
}

TEST_P(MatmulTypes, MatchesF32ReferenceWithinActivationQuantizationError) {
  const DType t = GetParam();
  const int64_t cols = cols_for(t), rows = 17, T = 5;
  const TestMatrix m = make_matrix(t, rows, cols, 99);
  const TestActs a = make_acts(T, cols, 100);
  ThreadPool pool(2);
  Activations acts;
  acts.set(a.x, T, cols);
  std::vector<float> y(static_cast<size_t>(T * rows));
  matmul(m.w, acts, y.data(), rows, pool);
  const int64_t block = activation_block(t);
  for (int64_t tt = 0; tt < T; ++tt) {
    const float* x = a.x + tt * cols;
    for (int64_t r = 0; r < rows; ++r) {
      const double exact =
          dot_row_ref(t, static_cast<const uint8_t*>(m.w.data) + r * m.w.row_bytes, x, cols);
      const double bound =
          (block ? quantization_bound(m, x, r, block) : 0.0) + 1e-5 * magnitude(m, x, r);
      EXPECT_NEAR(y[tt * rows + r], exact, bound)
          << dtype_name(t) << " at (" << tt << ", " << r << ")";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTypes, ::testing::ValuesIn(kAllTypes),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The types with integer kernels (Gemma 3 uses Q5_0, Q8_0, Q4_K, Q6_K; SmolLM2 Q4_1, Q8_0).
constexpr DType kIntegerTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                                   DType::Q8_0, DType::Q4_K, DType::Q6_K};

TEST(Matmul, EveryTypeWithAnIntegerKernelHasOne) {
  for (DType t : kIntegerTypes) EXPECT_TRUE(has_integer_kernel(t)) << dtype_name(t);
}

// Kernels work in groups of 8 rows (the last group of a range repeating its last row),
// 64-row panels and tiles of up to 4 tokens: every family against the scalar reference and
// against the f32 dequantized reference, with row counts around those edges, T = 1 .. 9
// tokens, 1 .. 3 threads, one and several blocks per row, and weights, activations and
// outputs at misaligned addresses (outputs with a stride wider than the rows).
TEST(Matmul, GroupAndTileEdgesMatchTheReferences) {
  ThreadPool pools[3] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  uint32_t seed = 500;
  for (DType t : kIntegerTypes) {
    const bool k_type = dtype_info(t).block_size == kQKK;
    for (int64_t cols : k_type ? std::vector<int64_t>{256, 1024} : std::vector<int64_t>{32, 640}) {
      for (int64_t rows : {1, 7, 8, 9, 15, 23, 67}) {
        const TestMatrix m = make_matrix(t, rows, cols, seed++);
        for (int64_t T = 1; T <= 9; ++T) {
          SCOPED_TRACE(::testing::Message()
                       << dtype_name(t) << " " << rows << "x" << cols << " T " << T);
          const TestActs a = make_acts(T, cols, seed++);
          Activations acts;
          acts.set(a.x, T, cols);
          std::vector<float> ref(static_cast<size_t>(T * rows));  // [T][rows]
          matmul_with(KernelIsa::kScalar, m.w, acts, ref.data(), rows, pools[0]);
          for (int64_t tt = 0; tt < T; ++tt) {
            const float* x = a.x + tt * cols;
            for (int64_t r = 0; r < rows; ++r) {
              const double exact = dot_row_ref(
                  t, static_cast<const uint8_t*>(m.w.data) + r * m.w.row_bytes, x, cols);
              const double bound =
                  quantization_bound(m, x, r, k_type ? kQKK : kQK) + 1e-5 * magnitude(m, x, r);
              ASSERT_NEAR(ref[tt * rows + r], exact, bound)
                  << "scalar at (" << tt << ", " << r << ")";
            }
          }
          const int64_t ldy = rows + 3;
          for (KernelIsa isa : available_isas()) {
            for (ThreadPool& pool : pools) {
              std::vector<float> storage(static_cast<size_t>(T * ldy + 1), -7.0f);
              float* y = storage.data() + 1;  // [T][ldy], 4 bytes off alignment
              Activations fresh;
              fresh.set(a.x, T, cols);
              matmul_with(isa, m.w, fresh, y, ldy, pool);
              for (int64_t tt = 0; tt < T; ++tt) {
                for (int64_t r = 0; r < ldy; ++r) {
                  if (r >= rows) {
                    ASSERT_EQ(y[tt * ldy + r], -7.0f)
                        << "padding written at (" << tt << ", " << r << ")";
                    continue;
                  }
                  const double mag = magnitude(m, a.x + tt * cols, r);
                  ASSERT_NEAR(y[tt * ldy + r], ref[tt * rows + r], 1e-5 * mag + 1e-30)
                      << isa_name(isa) << " threads " << pool.size() << " at (" << tt << ", " << r
                      << ")";
                }
              }
            }
          }
        }
      }
    }
  }
}

// The interleaved layout (WeightLayout::kRows8) changes only the order in which products
// read the weights: for every type that takes it, every family, thread count, batch size,
// and rows around and between whole groups of 8, products with the interleaved copy equal
// those with the GGUF rows bit for bit; fused jobs (matmul_many, matmul_swiglu) too; and
// its rows dequantize to the same values.
TEST(Matmul, InterleavedRowsGiveTheBitsOfGgufRows) {
  ThreadPool pools[3] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  uint32_t seed = 900;
  for (DType t : kIntegerTypes) {
    if (!can_interleave(t)) continue;
    for (int64_t rows : {1, 7, 8, 9, 16, 23, 67, 200}) {
      const int64_t cols = rows % 2 ? 64 : 640;
      const TestMatrix m = make_matrix(t, rows, cols, seed++);
      std::vector<uint8_t> copy(m.w.row_bytes * static_cast<uint64_t>(rows) + 1, 0xAB);
      const WeightMatrix w8 = interleave_rows8(m.w, copy.data() + 1);  // odd address
      ASSERT_EQ(w8.layout, WeightLayout::kRows8);
      ASSERT_EQ(w8.data, copy.data() + 1);
      if (rows >= 16) {
        ASSERT_NE(std::memcmp(copy.data() + 1, m.w.data, m.w.row_bytes * 2), 0)
            << "the first group's bytes were not reordered";
      }
      std::vector<float> a(static_cast<size_t>(cols)), b(a);
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_weight_row(m.w, r, a.data());
        dequantize_weight_row(w8, r, b.data());
        ASSERT_EQ(a, b) << dtype_name(t) << " row " << r;
      }
      for (int64_t T : {1, 2, 5, 9}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_name(t) << " " << rows << "x" << cols << " T " << T);
        const TestActs x = make_acts(T, cols, seed++);
        for (KernelIsa isa : available_isas()) {
          for (ThreadPool& pool : pools) {
            std::vector<float> want(static_cast<size_t>(T * rows)), got(want.size(), NAN);
            Activations a1, a2;
            a1.set(x.x, T, cols);
            a2.set(x.x, T, cols);
            matmul_with(isa, m.w, a1, want.data(), rows, pool);
            matmul_with(isa, w8, a2, got.data(), rows, pool);
            ASSERT_EQ(got, want) << isa_name(isa) << " threads " << pool.size();
          }
        }
      }
    }
  }
  // Fused single-token jobs over interleaved matrices.
  const int64_t cols = 256;
  const TestMatrix q = make_matrix(DType::Q4_1, 43, cols, 51);
  const TestMatrix k = make_matrix(DType::Q8_0, 24, cols, 52);
  const TestMatrix g = make_matrix(DType::Q5_0, 40, cols, 53);
  const TestMatrix u = make_matrix(DType::Q4_0, 40, cols, 54);
  std::vector<uint8_t> bq(q.w.row_bytes * 43), bk(k.w.row_bytes * 24), bg(g.w.row_bytes * 40),
      bu(u.w.row_bytes * 40);
  const WeightMatrix q8 = interleave_rows8(q.w, bq.data()), k8 = interleave_rows8(k.w, bk.data()),
                     g8 = interleave_rows8(g.w, bg.data()), u8 = interleave_rows8(u.w, bu.data());
  const TestActs x = make_acts(1, cols, 55);
  for (ThreadPool& pool : pools) {
    std::vector<float> y1(43), y2(24), z1(43, NAN), z2(24, NAN);
    const MatmulOut rows_outs[2] = {{&q.w, y1.data(), 43}, {&k.w, y2.data(), 24}};
    const MatmulOut rows8_outs[2] = {{&q8, z1.data(), 43}, {&k8, z2.data(), 24}};
    Activations a1, a2;
    a1.set(x.x, 1, cols);
    a2.set(x.x, 1, cols);
    matmul_many(rows_outs, 2, a1, pool);
    matmul_many(rows8_outs, 2, a2, pool);
    EXPECT_EQ(z1, y1) << "threads " << pool.size();
    EXPECT_EQ(z2, y2) << "threads " << pool.size();
    std::vector<float> gate(40), up(40), gate8(40, NAN), up8(40, NAN);
    matmul_swiglu(g.w, u.w, a1, gate.data(), up.data(), 40, pool);
    matmul_swiglu(g8, u8, a2, gate8.data(), up8.data(), 40, pool);
    EXPECT_EQ(gate8, gate) << "threads " << pool.size();
    EXPECT_EQ(up8, up) << "threads " << pool.size();
  }
}

// The largest integer sums a block can make (every value at its type's maximum, every
// activation at +-127) come out the same from the interleaved groups as from GGUF's rows
// in every family: the packed kernels add products in int16 before widening, and these
// blocks are where that would overflow.
TEST(Matmul, InterleavedRowsHoldTheLargestBlockSums) {
  ThreadPool pool(2);
  for (DType t : kIntegerTypes) {
    if (!can_interleave(t)) continue;
    for (uint8_t fill : {uint8_t{0xFF}, uint8_t{0x80}, uint8_t{0x81}}) {
      const int64_t rows = 24, cols = 128;
      TestMatrix m = make_matrix(t, rows, cols, 77);
      std::vector<bool> scale(static_cast<size_t>(dtype_info(t).type_size), false);
      for (int off : f16_fields(t))
        scale[static_cast<size_t>(off)] = scale[static_cast<size_t>(off) + 1] = true;
      const uint64_t bb = dtype_info(t).type_size;
      auto* data = static_cast<uint8_t*>(const_cast<void*>(m.w.data));
      for (uint64_t i = 0; i < m.w.row_bytes * rows; ++i) {
        if (!scale[i % bb]) data[i] = fill;
      }
      std::vector<uint8_t> copy(m.w.row_bytes * static_cast<uint64_t>(rows));
      const WeightMatrix w8 = interleave_rows8(m.w, copy.data());
      for (float sign : {1.0f, -1.0f}) {
        const std::vector<float> x(static_cast<size_t>(cols), sign);
        for (KernelIsa isa : available_isas()) {
          std::vector<float> want(static_cast<size_t>(rows)), got(want.size(), NAN);
          Activations a1, a2;
          a1.set(x.data(), 1, cols);
          a2.set(x.data(), 1, cols);
          matmul_with(isa, m.w, a1, want.data(), rows, pool);
          matmul_with(isa, w8, a2, got.data(), rows, pool);
          ASSERT_EQ(got, want) << dtype_name(t) << " fill " << int{fill} << " sign " << sign << " "
                               << isa_name(isa);
        }
      }
    }
  }
}

TEST(Matmul, InterleavingIsOnlyForTheTypesThatTakeIt) {
  const TestMatrix q4k = make_matrix(DType::Q4_K, 16, 256, 61);
  const TestMatrix f16 = make_matrix(DType::F16, 16, 64, 62);
  std::vector<uint8_t> buf(q4k.w.row_bytes * 16);
  EXPECT_FALSE(can_interleave(DType::Q4_K));
  EXPECT_FALSE(can_interleave(DType::F16));
  EXPECT_TRUE(can_interleave(DType::Q4_1));
  EXPECT_THROW(interleave_rows8(q4k.w, buf.data()), InvalidArgument);
  EXPECT_THROW(interleave_rows8(f16.w, buf.data()), InvalidArgument);
  const TestMatrix q41 = make_matrix(DType::Q4_1, 16, 64, 63);
  std::vector<uint8_t> b41(q41.w.row_bytes * 16);
  const WeightMatrix w8 = interleave_rows8(q41.w, b41.data());
  EXPECT_THROW(interleave_rows8(w8, buf.data()), InvalidArgument) << "already interleaved";
  // A K-type matrix claiming the interleaved layout is refused by the products.
  WeightMatrix bad = q4k.w;
  bad.layout = WeightLayout::kRows8;
  ThreadPool pool(1);
  const TestActs x = make_acts(1, 256, 64);
  Activations acts;
  acts.set(x.x, 1, 256);
  std::vector<float> y(16);
  EXPECT_THROW(matmul(bad, acts, y.data(), 16, pool), InvalidArgument);
}

// prefill == decode and chunked == per-token evaluation rest on this: for T = 1 .. 9 (every
// tile remainder), each token of a batch, and of any split of the batch into chunks, gets
// exactly the bits of a single-token product, in every family and with 1 .. 3 threads.
TEST(Matmul, EveryTokenOfAnyBatchOrChunkGetsItsSingleTokenBits) {
  ThreadPool pools[3] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  uint32_t seed = 700;
  for (DType t : kIntegerTypes) {
    const int64_t cols = dtype_info(t).block_size == kQKK ? 512 : 160;
    for (int64_t rows : {9, 67}) {
      const TestMatrix m = make_matrix(t, rows, cols, seed++);
      const TestActs a = make_acts(9, cols, seed++);
      for (KernelIsa isa : available_isas()) {
        // Single-token products of the 9 tokens (1 thread).
        std::vector<float> single(static_cast<size_t>(9 * rows));  // [9][rows]
        for (int64_t tt = 0; tt < 9; ++tt) {
          Activations one;
          one.set(a.x + tt * cols, 1, cols);
          matmul_with(isa, m.w, one, single.data() + tt * rows, rows, pools[0]);
        }
        for (ThreadPool& pool : pools) {
          for (int64_t T = 1; T <= 9; ++T) {
            for (int64_t chunk : {T, int64_t{2}, int64_t{3}, int64_t{5}}) {
              std::vector<float> y(static_cast<size_t>(T * rows));  // [T][rows]
              for (int64_t t0 = 0; t0 < T; t0 += chunk) {
                const int64_t n = std::min(chunk, T - t0);
                Activations batch;
                batch.set(a.x + t0 * cols, n, cols);
                matmul_with(isa, m.w, batch, y.data() + t0 * rows, rows, pool);
              }
              ASSERT_EQ(std::memcmp(y.data(), single.data(), y.size() * sizeof(float)), 0)
                  << dtype_name(t) << " " << isa_name(isa) << " rows " << rows << " T " << T
                  << " chunks of " << chunk << " threads " << pool.size();
            }
          }
        }
      }
    }
  }
}

TEST(Matmul, TheQuantizationBoundIsTight) {
  // The bound above must not be vacuous: the integer path's error is a sizeable fraction
  // of it, so a kernel that skipped activation quantization or mis-scaled would show.
  const TestMatrix m = make_matrix(DType::Q8_0, 64, 224, 5);
  const TestActs a = make_acts(1, 224, 6);
  ThreadPool pool(1);
  std::vector<float> y(64);
  matvec(m.w, a.x, y.data(), pool);
  double err = 0.0, bound = 0.0;
  for (int64_t r = 0; r < 64; ++r) {
    const double exact = dot_row_ref(
        DType::Q8_0, static_cast<const uint8_t*>(m.w.data) + r * m.w.row_bytes, a.x, 224);
    err += std::fabs(y[r] - exact);
    bound += quantization_bound(m, a.x, r, kQK);
  }
  EXPECT_GT(err, 0.0);
  EXPECT_LT(err, bound);
  EXPECT_GT(err, bound / 100.0);
}

TEST(Matmul, OutputStrideLeavesPaddingUntouched) {
  const TestMatrix m = make_matrix(DType::Q4_1, 9, 224, 11);
  const TestActs a = make_acts(4, 224, 12);
  ThreadPool pool(2);
  Activations acts;
  acts.set(a.x, 4, 224);
  const int64_t ldy = 13;
  std::vector<float> y(4 * ldy, -7.0f), ref(4 * 9);
  matmul(m.w, acts, y.data(), ldy, pool);
  matmul_with(KernelIsa::kScalar, m.w, acts, ref.data(), 9, pool);
  for (int64_t t = 0; t < 4; ++t) {
    for (int64_t r = 0; r < ldy; ++r) {
      if (r < 9) {
        EXPECT_NEAR(y[t * ldy + r], ref[t * 9 + r], 1e-4);
      } else {
        EXPECT_EQ(y[t * ldy + r], -7.0f);
      }
    }
  }
}

TEST(Matmul, MatvecEqualsSingleRowMatmul) {
  const TestMatrix m = make_matrix(DType::Q4_K, 7, 512, 21);
  const TestActs a = make_acts(1, 512, 22);
  ThreadPool pool(2);
  std::vector<float> y1(7), y2(7);
  matvec(m.w, a.x, y1.data(), pool);
  Activations acts;
  acts.set(a.x, 1, 512);
  matmul(m.w, acts, y2.data(), 7, pool);
  EXPECT_EQ(y1, y2);
}

// Fused jobs must not change a bit: Q, K, V as one job, gate/up/SwiGLU as one job.
TEST(Matmul, FusedProductsEqualSeparateOnes) {
  const int64_t cols = 512;
  const TestMatrix a = make_matrix(DType::Q4_1, 40, cols, 31);
  const TestMatrix b = make_matrix(DType::Q4_K, 13, cols, 32);
  const TestMatrix c = make_matrix(DType::Q8_0, 7, cols, 33);
  const TestMatrix f = make_matrix(DType::F16, 9, cols, 34);  // f32 fallback
  const TestMatrix up = make_matrix(DType::Q4_0, 40, cols, 35);
  for (int64_t T : {1, 3}) {
    const TestActs x = make_acts(T, cols, 36);
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      for (bool with_fallback : {false, true}) {
        const TestMatrix* ms[4] = {&a, &b, &c, with_fallback ? &f : &a};
        std::vector<std::vector<float>> fused(4), apart(4);
        MatmulOut outs[4];
        Activations acts;
        acts.set(x.x, T, cols);
        for (int i = 0; i < 4; ++i) {
          fused[i].assign(static_cast<size_t>(T * ms[i]->w.rows), NAN);
          apart[i].assign(fused[i].size(), NAN);
          outs[i] = {&ms[i]->w, fused[i].data(), ms[i]->w.rows};
          matmul(ms[i]->w, acts, apart[i].data(), ms[i]->w.rows, pool);
        }
        Activations acts2;
        acts2.set(x.x, T, cols);
        matmul_many(outs, 4, acts2, pool);
        for (int i = 0; i < 4; ++i) EXPECT_EQ(fused[i], apart[i]) << "T " << T << " product " << i;
      }
      // Gate (Q4_1) and up (Q4_0) with SwiGLU, output stride wider than the rows.
      const int64_t ld = 45;
      std::vector<float> g1(static_cast<size_t>(T * ld), 7.0f), u1(g1), g2(g1), u2(g1);
      Activations acts;
      acts.set(x.x, T, cols);
      matmul(a.w, acts, g1.data(), ld, pool);
      matmul(up.w, acts, u1.data(), ld, pool);
      for (int64_t t = 0; t < T; ++t) swiglu(g1.data() + t * ld, u1.data() + t * ld, a.w.rows);
      Activations acts2;
      acts2.set(x.x, T, cols);
      matmul_swiglu(a.w, up.w, acts2, g2.data(), u2.data(), ld, pool);
      EXPECT_EQ(g1, g2) << "T " << T << " threads " << threads;
      EXPECT_EQ(u1, u2) << "T " << T << " threads " << threads;
    }
  }
  ThreadPool pool(1);
  Activations acts;
  const TestActs x = make_acts(1, cols, 37);
  acts.set(x.x, 1, cols);
  std::vector<float> g(64), u(64);
  EXPECT_THROW(matmul_swiglu(a.w, b.w, acts, g.data(), u.data(), 40, pool), InvalidArgument);
  const MatmulOut no_matrix[1] = {{nullptr, g.data(), 40}};
  EXPECT_THROW(matmul_many(no_matrix, 1, acts, pool), InvalidArgument);
  EXPECT_THROW(matmul_many(nullptr, -1, acts, pool), InvalidArgument);
  matmul_many(nullptr, 0, acts, pool);  // nothing to do
}

// Gemma 3's mix of types in the fused single-token jobs: Q, K (Q5_0) and V (Q8_0 or Q5_0)
// as one job, gate and up (Q5_0) with SwiGLU as one; K types beside them.
TEST(Matmul, FusedProductsOfGemmaTypesEqualSeparateOnes) {
  const int64_t cols = 512;
  const TestMatrix q = make_matrix(DType::Q5_0, 40, cols, 41);
  const TestMatrix k = make_matrix(DType::Q5_0, 9, cols, 42);
  const TestMatrix v = make_matrix(DType::Q8_0, 9, cols, 43);
  const TestMatrix o = make_matrix(DType::Q4_K, 13, cols, 44);
  const TestMatrix d = make_matrix(DType::Q6_K, 11, cols, 45);
  const TestMatrix gate = make_matrix(DType::Q5_0, 37, cols, 46);
  const TestMatrix up = make_matrix(DType::Q5_1, 37, cols, 47);
  const TestActs x = make_acts(1, cols, 48);
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    const TestMatrix* ms[5] = {&q, &k, &v, &o, &d};
    std::vector<std::vector<float>> fused(5), apart(5);
    MatmulOut outs[5];
    Activations acts;
    acts.set(x.x, 1, cols);
    for (int i = 0; i < 5; ++i) {
      fused[i].assign(static_cast<size_t>(ms[i]->w.rows), NAN);
      apart[i].assign(fused[i].size(), NAN);
      outs[i] = {&ms[i]->w, fused[i].data(), ms[i]->w.rows};
      matmul(ms[i]->w, acts, apart[i].data(), ms[i]->w.rows, pool);
    }
    Activations acts2;
    acts2.set(x.x, 1, cols);
    matmul_many(outs, 5, acts2, pool);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(fused[i], apart[i]) << "product " << i;
    std::vector<float> g1(37), u1(37), g2(37), u2(37);
    matmul(gate.w, acts, g1.data(), 37, pool);
    matmul(up.w, acts, u1.data(), 37, pool);
    swiglu(g1.data(), u1.data(), 37);
    Activations acts3;
    acts3.set(x.x, 1, cols);
    matmul_swiglu(gate.w, up.w, acts3, g2.data(), u2.data(), 37, pool);
    EXPECT_EQ(g1, g2) << "threads " << threads;
    EXPECT_EQ(u1, u2) << "threads " << threads;
  }
}

TEST(Matmul, ActivationsAreQuantizedOnceAndRefreshedBySet) {
  ThreadPool pool(1);
  std::vector<float> x(256, 1.0f);
  Activations acts;
  acts.set(x.data(), 1, 256);
  const void* p0 = acts.q8_0(pool);
  const void* p1 = acts.q8_0(pool);
  EXPECT_EQ(p0, p1);
  const TestMatrix m = make_matrix(DType::Q8_0, 3, 256, 31);
  std::vector<float> y_before(3), y_after(3);
  matmul(m.w, acts, y_before.data(), 3, pool);
  for (auto& v : x) v = -2.0f;
  acts.set(x.data(), 1, 256);  // a new vector: the quantized form must be rebuilt
  matmul(m.w, acts, y_after.data(), 3, pool);
  for (int r = 0; r < 3; ++r)
    EXPECT_NEAR(y_after[r], -2.0f * y_before[r], 1e-4f * std::fabs(y_before[r]) + 1e-6f);
}

TEST(Matmul, RejectsMismatchedShapes) {
  const TestMatrix m = make_matrix(DType::Q4_1, 4, 224, 41);
  ThreadPool pool(1);
  std::vector<float> x(256), y(16);
  Activations acts;
  acts.set(x.data(), 1, 256);
  EXPECT_THROW(matmul(m.w, acts, y.data(), 4, pool), InvalidArgument);
  WeightMatrix bad = m.w;
  bad.row_bytes += 1;
  acts.set(x.data(), 1, 224);
  EXPECT_THROW(matmul(bad, acts, y.data(), 4, pool), InvalidArgument);
  acts.set(x.data(), 2, 224);
  EXPECT_THROW(matmul(m.w, acts, y.data(), 3, pool), InvalidArgument);  // ldy < rows
  std::vector<float> odd(40);
  acts.set(odd.data(), 1, 40);
  EXPECT_THROW(acts.q8_0(pool), InvalidArgument);
}

// Rows of activations for the quantizer tests, `block` values a block (32 for Q8A, 256 for
// Q8_K), at least 5 blocks: random values at a scale that sweeps 2^-10..2^9, and by round
// the cases a quantizer gets wrong: exact rounding ties, NaN and infinities, blocks of
// zeros and of negative zeros, a denormal block (127 / amax overflows to inf), a block of
// NaN only, and blocks of one sign per 16 values (the largest group sums).
class ActivationRows {
 public:
  ActivationRows(int64_t block, uint32_t seed) : block_(block), x_(block * 5), rng_(seed) {}

  std::vector<float>& next(int round) {
    const float scale = std::ldexp(1.0f, round % 20 - 10);
    for (float& v : x_) v = normal_(rng_) * scale;
    const auto at = [&](int64_t b, int64_t j) -> float& {
      return x_[static_cast<size_t>(b * block_ + j)];
    };
    switch (round % 8) {
      case 1:  // exact ties: x * (127 / amax) lands on k + 0.5
        for (int64_t j = 0; j < block_; ++j) at(0, j) = static_cast<float>(j % 32 - 16) + 0.5f;
        at(0, block_ - 1) = 127.0f;
        break;
      case 2:
        at(0, 3) = std::nanf("");
        at(1, 8) = -std::numeric_limits<float>::infinity();
        at(2, 6) = std::numeric_limits<float>::infinity();
        break;
      case 3:
        for (int64_t j = 0; j < block_; ++j) at(1, j) = 0.0f, at(2, j) = -0.0f;
        break;
      case 4:  // denormal amax: 127 / amax overflows to inf
        for (int64_t j = 0; j < block_; ++j) at(3, j) = 1e-40f * static_cast<float>(j % 32 - 15);
        break;
      case 5:  // a block of NaN only
        for (int64_t j = 0; j < block_; ++j) at(4, j) = std::nanf("");
        break;
      case 6:  // one sign per 16 values
        for (size_t j = 0; j < x_.size(); ++j) x_[j] = (j / 16) % 2 ? -1.0f : 1.0f;
        break;
      default:
        break;
    }
    return x_;
  }

 private:
  int64_t block_;
  std::vector<float> x_;
  std::mt19937 rng_;
  std::normal_distribution<float> normal_{0.0f, 1.0f};
};

// Every family quantizes activations to the scalar reference's bytes: the same scales,
// sums and values, ties rounded to even, NaN to 0, infinities and overflowing products
// clamped, all-zero and tiny blocks included; for Q8A (32 values a block) and for the
// K-quant activations (Q8_K: 256 values a block, group sums of 16).
TEST(Matmul, ActivationQuantizingGivesTheReferenceBytes) {
  struct Format {
    const char* name;
    int64_t block;
    int64_t (*row_bytes)(int64_t);
    detail::QuantizeFn reference;
    detail::QuantizeFn detail::MatmulKernels::*fn;
  };
  for (const Format& f : {Format{"q8a", kQK, detail::q8a_row_bytes, detail::quantize_q8a_scalar,
                                 &detail::MatmulKernels::quantize_q8a},
                          Format{"q8k", kQKK, detail::q8k_row_bytes, detail::quantize_q8k_scalar,
                                 &detail::MatmulKernels::quantize_q8k}}) {
    ActivationRows rows(f.block, 7);
    for (int round = 0; round < 40; ++round) {
      const std::vector<float>& x = rows.next(round);
      const auto cols = static_cast<int64_t>(x.size());
      std::vector<std::byte> want(static_cast<size_t>(f.row_bytes(cols)));
      f.reference(x.data(), cols, want.data());
      if (f.block == kQKK && round % 8 == 6) {  // the test data is what it says
        const auto* blk = reinterpret_cast<const BlockQ8_K*>(want.data());
        ASSERT_EQ(blk->bsums[0], 127 * 16);
        ASSERT_EQ(blk->bsums[1], -127 * 16);
      }
      for (KernelIsa isa : available_isas()) {
        std::vector<std::byte> got(want.size(), std::byte{0x55});
        (detail::kernels_for(isa).matmul.*f.fn)(x.data(), cols, got.data());
        ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size()), 0)
            << f.name << " " << isa_name(isa) << " round " << round;
      }
    }
  }
}

// The prefetch hints of a single-token product name the rows each thread's first range of
// the job covers: the pool gives thread i blocks [B * i / nth, B * (i + 1) / nth) of the
// job's B blocks of 16 rows (matrices one after another, or gate and up side by side).
// The data pointers are only added to, never read.
TEST(Matmul, SingleTokenShareIsTheRowsEachThreadTakesFirst) {
  const auto at = [](uintptr_t a) { return reinterpret_cast<const void*>(a); };
  const auto offset = [](const ThreadPool::HintRange& r, uintptr_t base) {
    return reinterpret_cast<uintptr_t>(r.data) - base;
  };
  constexpr uint64_t rb = 360;  // a Q4_1 row of 576
  const WeightMatrix wq{DType::Q4_1, at(0x100000), 576, 576, rb};
  const WeightMatrix wk{DType::Q4_1, at(0x200000), 192, 576, rb};
  const WeightMatrix wv{DType::Q4_1, at(0x300000), 192, 576, rb};
  const WeightMatrix* qkv[3] = {&wq, &wk, &wv};
  ThreadPool::HintRange r[ThreadPool::kHintRanges];
  // 36 + 12 + 12 blocks; thread 1 of 2 takes blocks 30..60: wq's last 96 rows, wk, wv.
  ASSERT_EQ(detail::single_token_share(qkv, 3, false, size_t{1} << 20, 1, 2, r), 3);
  EXPECT_EQ(offset(r[0], 0x100000), 480 * rb);
  EXPECT_EQ(r[0].bytes, 96 * rb);
  EXPECT_EQ(offset(r[1], 0x200000), 0u);
  EXPECT_EQ(r[1].bytes, 192 * rb);
  EXPECT_EQ(offset(r[2], 0x300000), 0u);
  EXPECT_EQ(r[2].bytes, 192 * rb);
  // Thread 0 takes wq's first 480 rows; a cap cuts the ranges in order.
  ASSERT_EQ(detail::single_token_share(qkv, 3, false, size_t{1} << 20, 0, 2, r), 1);
  EXPECT_EQ(offset(r[0], 0x100000), 0u);
  EXPECT_EQ(r[0].bytes, 480 * rb);
  ASSERT_EQ(detail::single_token_share(qkv, 3, false, 100000, 1, 2, r), 2);
  EXPECT_EQ(r[0].bytes + r[1].bytes, 100000u);
  // Thread 2 of 3: blocks 40..60, wk from row 64 on, then wv.
  ASSERT_EQ(detail::single_token_share(qkv, 3, false, size_t{1} << 20, 2, 3, r), 2);
  EXPECT_EQ(offset(r[0], 0x200000), 64 * rb);
  EXPECT_EQ(r[0].bytes, 128 * rb);
  EXPECT_EQ(offset(r[1], 0x300000), 0u);

  // Gate and up side by side: the same rows of both, half the bytes each.
  const WeightMatrix gate{DType::Q4_1, at(0x400000), 1536, 576, rb};
  const WeightMatrix up{DType::Q4_1, at(0x800000), 1536, 576, rb};
  const WeightMatrix* gu[2] = {&gate, &up};
  ASSERT_EQ(detail::single_token_share(gu, 2, true, 4096, 1, 2, r), 2);
  EXPECT_EQ(offset(r[0], 0x400000), 768 * rb);
  EXPECT_EQ(offset(r[1], 0x800000), 768 * rb);
  EXPECT_EQ(r[0].bytes, 2048u);
  EXPECT_EQ(r[1].bytes, 2048u);

  // Nothing where the product is not one job of integer kernels, or no such thread.
  const WeightMatrix f32{DType::F32, at(0x100000), 64, 64, 256};
  const WeightMatrix* one[1] = {&f32};
  EXPECT_EQ(detail::single_token_share(one, 1, false, 4096, 1, 2, r), 0);
  EXPECT_EQ(detail::single_token_share(qkv, 3, false, 4096, 2, 2, r), 0);
  EXPECT_EQ(detail::single_token_share(qkv, 3, true, 4096, 1, 2, r), 0);
}

TEST(Matmul, ReportsAKernelFamily) {
  const std::string isa = kernel_isa();
  EXPECT_TRUE(isa == "avx512-vnni" || isa == "avx2" || isa == "scalar") << isa;
  EXPECT_EQ(available_isas().front(), KernelIsa::kScalar);
  EXPECT_EQ(detail::kernels().isa,
            detail::select_isa(detail::cpu_features(), std::getenv("SPILLWAY_ISA")));
  EXPECT_EQ(isa, isa_name(detail::kernels().isa));
}

// The families listed are those the CPU runs, narrowest first; each table reports its own
// family and has every integer kernel; a family the CPU lacks is refused.
TEST(Matmul, AvailableFamiliesMatchTheCpu) {
  const detail::CpuFeatures& cpu = detail::cpu_features();
  std::vector<KernelIsa> want{KernelIsa::kScalar};
  if (cpu.avx2) want.push_back(KernelIsa::kAvx2);
  if (cpu.avx512_vnni) want.push_back(KernelIsa::kAvx512Vnni);
  EXPECT_EQ(available_isas(), want);
  EXPECT_TRUE(!cpu.avx512_vnni || cpu.avx2);
  for (KernelIsa isa : {KernelIsa::kScalar, KernelIsa::kAvx2, KernelIsa::kAvx512Vnni}) {
    if (!detail::can_run(cpu, isa)) {
      EXPECT_THROW(detail::kernels_for(isa), UnsupportedError) << isa_name(isa);
      const TestMatrix m = make_matrix(DType::Q8_0, 3, 64, 1);
      const TestActs a = make_acts(1, 64, 2);
      Activations acts;
      acts.set(a.x, 1, 64);
      ThreadPool pool(1);
      std::vector<float> y(3);
      EXPECT_THROW(matmul_with(isa, m.w, acts, y.data(), 3, pool), UnsupportedError);
      continue;
    }
    const detail::Kernels& k = detail::kernels_for(isa);
    EXPECT_EQ(k.isa, isa);
    for (detail::TileFn f : {k.matmul.q4_0, k.matmul.q4_1, k.matmul.q5_0, k.matmul.q5_1,
                             k.matmul.q8_0, k.matmul.q4_k, k.matmul.q6_k}) {
      EXPECT_NE(f, nullptr) << isa_name(isa);
    }
    EXPECT_NE(k.matmul.dot_f32, nullptr);
    EXPECT_NE(k.matmul.quantize_q8a, nullptr);
    EXPECT_NE(k.matmul.quantize_q8k, nullptr);
    EXPECT_NE(k.attend_piece, nullptr);
    EXPECT_NE(k.rmsnorm, nullptr);
    EXPECT_NE(k.softmax, nullptr);
    EXPECT_NE(k.swiglu, nullptr);
    EXPECT_NE(k.geglu, nullptr);
  }
}

// The choice of a family: the best the CPU runs; SPILLWAY_ISA picks a narrower one, or a
// name of the AVX-512 family, only where the CPU runs it; anything else is ignored.
TEST(Matmul, FamilySelectionHonoursTheCpuAndTheOverride) {
  const detail::CpuFeatures none{}, avx2{true, false}, avx512{true, true};
  using K = KernelIsa;
  EXPECT_EQ(detail::select_isa(none, nullptr), K::kScalar);
  EXPECT_EQ(detail::select_isa(avx2, nullptr), K::kAvx2);
  EXPECT_EQ(detail::select_isa(avx512, nullptr), K::kAvx512Vnni);
  for (const char* name : {"avx512", "avx512-vnni"}) {
    EXPECT_EQ(detail::select_isa(avx512, name), K::kAvx512Vnni) << name;
    EXPECT_EQ(detail::select_isa(avx2, name), K::kAvx2) << name;  // ignored: best instead
    EXPECT_EQ(detail::select_isa(none, name), K::kScalar) << name;
  }
  EXPECT_EQ(detail::select_isa(avx512, "avx2"), K::kAvx2);
  EXPECT_EQ(detail::select_isa(avx512, "scalar"), K::kScalar);
  EXPECT_EQ(detail::select_isa(avx2, "scalar"), K::kScalar);
  EXPECT_EQ(detail::select_isa(none, "avx2"), K::kScalar);
  EXPECT_EQ(detail::select_isa(avx512, ""), K::kAvx512Vnni);
  EXPECT_EQ(detail::select_isa(avx512, "AVX2"), K::kAvx512Vnni);
  EXPECT_EQ(detail::select_isa(avx512, "avx512vnni"), K::kAvx512Vnni);
  EXPECT_EQ(detail::select_isa(avx2, "sse"), K::kAvx2);
  EXPECT_TRUE(detail::can_run(none, K::kScalar));
  EXPECT_FALSE(detail::can_run(none, K::kAvx2));
  EXPECT_FALSE(detail::can_run(avx2, K::kAvx512Vnni));
  EXPECT_TRUE(detail::can_run(avx512, K::kAvx512Vnni));
  EXPECT_STREQ(isa_name(K::kAvx512Vnni), "avx512-vnni");
}

// Every SIMD family runs matmul_groups.h's kernels with its own integer products (AVX2:
// vpmaddubsw / vpmaddwd; AVX-512 VNNI: vpdpbusd / vpdpwssd) and then the same float
// arithmetic: against the scalar reference within the bound the AVX2 kernels are held to,
// and equal to AVX2 bit for bit. Rows around the 8-row groups and 64-row panels, one block
// and many blocks per row, T = 1 and T > 1 (tile remainders), 1 and 2 threads, misaligned
// weights and outputs.
class MatmulFamily : public ::testing::TestWithParam<KernelIsa> {};

TEST_P(MatmulFamily, MatchesScalarAndEqualsAvx2) {
  const KernelIsa isa = GetParam();
  SPILLWAY_SKIP_UNLESS_RUNS(isa);
  ThreadPool pools[2] = {ThreadPool(1), ThreadPool(2)};
  uint32_t seed = 900;
  for (DType t : kIntegerTypes) {
    const bool k_type = dtype_info(t).block_size == kQKK;
    for (int64_t cols : k_type ? std::vector<int64_t>{256, 1536} : std::vector<int64_t>{32, 576}) {
      for (int64_t rows : {1, 5, 9, 23, 67, 131}) {
        const TestMatrix m = make_matrix(t, rows, cols, seed++);
        for (int64_t T : {1, 3, 6}) {
          SCOPED_TRACE(::testing::Message()
                       << dtype_name(t) << " " << rows << "x" << cols << " T " << T);
          const TestActs a = make_acts(T, cols, seed++);
          const int64_t ldy = rows + 1;
          std::vector<float> ref(static_cast<size_t>(T * ldy), 0.0f);
          {
            Activations acts;
            acts.set(a.x, T, cols);
            matmul_with(KernelIsa::kScalar, m.w, acts, ref.data(), ldy, pools[0]);
          }
          for (ThreadPool& pool : pools) {
            std::vector<float> y2(static_cast<size_t>(T * ldy + 1), -7.0f), y5(y2);
            Activations a2, a5;
            a2.set(a.x, T, cols);
            a5.set(a.x, T, cols);
            matmul_with(KernelIsa::kAvx2, m.w, a2, y2.data() + 1, ldy, pool);
            matmul_with(isa, m.w, a5, y5.data() + 1, ldy, pool);
            for (int64_t tt = 0; tt < T; ++tt) {
              for (int64_t r = 0; r < ldy; ++r) {
                const float got = y5[1 + tt * ldy + r];
                if (r >= rows) {
                  ASSERT_EQ(got, -7.0f) << "padding written at (" << tt << ", " << r << ")";
                  continue;
                }
                const double mag = magnitude(m, a.x + tt * cols, r);
                ASSERT_NEAR(got, ref[tt * ldy + r], 1e-5 * mag + 1e-30)
                    << "threads " << pool.size() << " at (" << tt << ", " << r << ")";
                const float want = y2[1 + tt * ldy + r];
                ASSERT_EQ(std::memcmp(&got, &want, sizeof(float)), 0)
                    << "threads " << pool.size() << " at (" << tt << ", " << r << "): " << got
                    << " vs avx2 " << want;
              }
            }
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EveryFamily, MatmulFamily, ::testing::ValuesIn(test::simd_families()),
                         test::FamilyName());

}  // namespace
}  // namespace spillway::ops
