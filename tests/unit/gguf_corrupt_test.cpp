// The GGUF reader on deliberately corrupt files: each case asserts the error type and the
// precise message, then random mutations of a valid file must parse or throw
// spillway::Error, never crash (this suite runs under ASan/UBSan in CI).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "util/gguf_writer.h"
#include "util/paths.h"

namespace spillway {
namespace {

using gguf::Array;
using gguf::GgufFile;
using gguf::Value;
using gguf::ValueType;
using test::GgufWriter;

constexpr const char* kName = "models/x.gguf";

// Parses `image` and expects E with a message containing every substring.
// With SPILLWAY_FUZZ_SEED_DIR set, every rejected image is also written there (seeds of
// the reader's fuzz campaign, scripts/fuzz.sh).
void dump_seed(const std::vector<uint8_t>& image) {
  static int n = 0;
  const char* dir = std::getenv("SPILLWAY_FUZZ_SEED_DIR");
  if (!dir) return;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::ofstream f(fmt::format("{}/corrupt_{}_{}.gguf", dir, info ? info->name() : "x", n++),
                  std::ios::binary);
  f.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
}

template <class E>
void expect_reject(const std::vector<uint8_t>& image, std::initializer_list<std::string> subs) {
  dump_seed(image);
  try {
    GgufFile::from_bytes(image, kName);
    ADD_FAILURE() << "parsed; expected an error containing: " << *subs.begin();
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(std::string(kName) + ": ", 0), 0u)
        << "message must start with the file: " << msg;
    for (const auto& s : subs) {
      EXPECT_NE(msg.find(s), std::string::npos) << "message: " << msg << "\nexpected: " << s;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

std::vector<uint8_t> bytes_of(size_t n, uint8_t seed = 1) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed * 31 + i);
  return v;
}

// A small valid file: a few keys and three tensors.
GgufWriter small_model() {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  w.add_str("general.name", "a tiny test model");
  w.add_u32("llama.block_count", 1);
  w.add_f32("llama.rope.freq_base", 10000.0f);
  w.add_strings("tokenizer.ggml.tokens", {"<s>", "</s>", "a", "b"});
  w.add_tensor("token_embd.weight", {8, 4}, std::vector<float>(32, 0.25f));
  w.add_tensor("blk.0.attn_q.weight", DType::Q8_0, {32, 2}, bytes_of(68));
  w.add_tensor("output_norm.weight", {8}, std::vector<float>(8, 1.0f));
  return w;
}

TEST(GgufCorrupt, ValidBaseParses) {
  auto f = GgufFile::from_bytes(small_model().bytes(), kName);
  EXPECT_EQ(f->tensors().size(), 3u);
}

TEST(GgufCorrupt, BadMagic) {
  auto image = small_model().bytes();
  std::memcpy(image.data(), "GGML", 4);
  expect_reject<FormatError>(image,
                             {"not a GGUF file: magic at byte 0 is 'GGML' (hex 47 47 4d 4c), "
                              "expected 'GGUF'"});
}

TEST(GgufCorrupt, TooShortForMagic) {
  expect_reject<FormatError>({'G', 'G'}, {"truncated file: 2 bytes, too short for the GGUF magic"});
  expect_reject<FormatError>({}, {"truncated file: 0 bytes"});
}

TEST(GgufCorrupt, BadVersions) {
  auto image = small_model().bytes();
  GgufWriter::put_u32(image, GgufWriter::kVersionAt, 0);
  expect_reject<FormatError>(image, {"invalid GGUF version 0 at byte 4, expected version 2 or 3"});
  GgufWriter::put_u32(image, GgufWriter::kVersionAt, 1);
  expect_reject<UnsupportedError>(image,
                                  {"GGUF version 1 at byte 4 is not supported", "32-bit counts"});
  GgufWriter::put_u32(image, GgufWriter::kVersionAt, 4);
  expect_reject<UnsupportedError>(image, {"GGUF version 4 at byte 4 is not supported, expected "
                                          "version 2 or 3"});
  GgufWriter::put_u32(image, GgufWriter::kVersionAt, 0x03000000u);
  expect_reject<UnsupportedError>(image, {"big-endian"});
}

TEST(GgufCorrupt, TruncatedHeader) {
  auto image = small_model().bytes();
  image.resize(12);
  expect_reject<FormatError>(image, {"header: truncated file: field tensor_count at byte 8 needs 8 "
                                     "bytes, only 4 remain (file size 12)"});
  image.resize(20);
  expect_reject<FormatError>(
      image, {"field kv_count at byte 16 needs 8 bytes, only 4 remain (file size 20)"});
}

TEST(GgufCorrupt, HugeKvCountIsRejectedBeforeAllocating) {
  auto image = small_model().bytes();
  GgufWriter::put_u64(image, GgufWriter::kKvCountAt, std::numeric_limits<uint64_t>::max());
  expect_reject<FormatError>(image,
                             {"header: kv_count 18446744073709551615 at byte 16 is implausible: "
                              "each key/value needs at least 13 bytes, only " +
                              std::to_string(image.size() - 24) + " bytes follow the header"});
}

TEST(GgufCorrupt, HugeTensorCount) {
  auto image = small_model().bytes();
  GgufWriter::put_u64(image, GgufWriter::kTensorCountAt, uint64_t{1} << 40);
  expect_reject<FormatError>(image, {"tensor_count 1099511627776 at byte 8 is implausible"});
}

TEST(GgufCorrupt, TruncatedMetadata) {
  GgufWriter w;
  w.add_str("general.some_rather_long_key_name", "value");
  const auto lay = w.layout();
  auto image = w.bytes();
  image.resize(lay.kvs[0].type_at + 2);  // cut inside the value type
  expect_reject<FormatError>(
      image, {fmt::format("key 'general.some_rather_long_key_name' (at byte 24): truncated file: "
                          "value type at byte {} needs 4 bytes, only 2 remain",
                          lay.kvs[0].type_at)});
}

TEST(GgufCorrupt, TruncatedKeyName) {
  GgufWriter w;
  w.add_str("general.some_rather_long_key_name", "value");
  auto image = w.bytes();
  image.resize(24 + 8 + 10);
  expect_reject<FormatError>(
      image,
      {"metadata entry #0 (at byte 24): key at byte 24: string length 33 extends past end of "
       "file (10 bytes remain, file size 42)"});
}

TEST(GgufCorrupt, StringLengthPastEndOfFile) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  // general.name is the second key; its value starts with the string length.
  GgufWriter::put_u64(image, lay.kvs[1].value_at, uint64_t{1} << 40);
  expect_reject<FormatError>(
      image, {fmt::format("key 'general.name' (at byte {}): string value at byte {}: string length "
                          "1099511627776 extends past end of file",
                          lay.kvs[1].at, lay.kvs[1].value_at)});
}

TEST(GgufCorrupt, ArrayLengthPastEndOfFile) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  // tokenizer.ggml.tokens: u32 element type, then the u64 count.
  GgufWriter::put_u64(image, lay.kvs[4].value_at + 4, uint64_t{1} << 61);
  expect_reject<FormatError>(image,
                             {fmt::format("key 'tokenizer.ggml.tokens' (at byte {}): array length "
                                          "2305843009213693952 at byte {} extends past end of file",
                                          lay.kvs[4].at, lay.kvs[4].value_at + 4)});
}

TEST(GgufCorrupt, UnknownValueType) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  GgufWriter::put_u32(image, lay.kvs[2].type_at, 13);
  expect_reject<FormatError>(image,
                             {fmt::format("key 'llama.block_count' (at byte {}): value type at "
                                          "byte {} is 13, expected a value type id 0..12",
                                          lay.kvs[2].at, lay.kvs[2].type_at)});
}

TEST(GgufCorrupt, BoolOtherThanZeroOrOne) {
  GgufWriter w;
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  const auto lay = w.layout();
  auto image = w.bytes();
  image[lay.kvs[0].value_at] = 2;
  expect_reject<FormatError>(
      image, {fmt::format("bool value at byte {} is 2, expected 0 or 1", lay.kvs[0].value_at)});
}

TEST(GgufCorrupt, ArraysNestedTooDeep) {
  Value v(Value::Storage(std::in_place_index<0>, uint8_t{1}));
  for (int i = 0; i <= gguf::kMaxArrayDepth; ++i) {
    Array a;
    a.elem_type = v.type();
    a.items.push_back(v);
    v = Value(Value::Storage(std::move(a)));
  }
  GgufWriter w;
  w.add("deep", v);
  expect_reject<FormatError>(w.bytes(),
                             {"key 'deep' (at byte 24): arrays nested deeper than 8 levels"});
}

TEST(GgufCorrupt, DuplicateKey) {
  auto w = small_model();
  w.add_u32("llama.block_count", 2);
  const auto lay = w.layout();
  expect_reject<FormatError>(
      w.bytes(),
      {fmt::format("duplicate key 'llama.block_count' (at byte {})", lay.kvs.back().at)});
}

TEST(GgufCorrupt, EmptyKey) {
  GgufWriter w;
  w.add_u32("", 2);
  expect_reject<FormatError>(w.bytes(), {"metadata entry #0 (at byte 24): empty key"});
}

TEST(GgufCorrupt, AlignmentNotPowerOfTwo) {
  auto w = small_model();
  w.set_alignment(48);
  const auto lay = w.layout();
  expect_reject<FormatError>(
      w.bytes(), {fmt::format("key 'general.alignment' (at byte {}): alignment 48 is not a "
                              "nonzero power of two",
                              lay.kvs.back().at)});
  GgufWriter z;
  z.set_alignment(0);
  expect_reject<FormatError>(z.bytes(), {"alignment 0 is not a nonzero power of two"});
}

TEST(GgufCorrupt, AlignmentOfWrongType) {
  auto w = small_model();
  w.add_u64("general.alignment", 32);
  expect_reject<FormatError>(w.bytes(),
                             {"key 'general.alignment'", "expected uint32, found uint64"});
}

TEST(GgufCorrupt, TruncatedTensorInfos) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  image.resize(lay.tensors[1].ne_at + 8 + 3);  // first dimension read, the second cut
  expect_reject<FormatError>(
      image,
      {fmt::format("tensor 'blk.0.attn_q.weight' (info at byte {}): truncated file: dimension "
                   "at byte {} needs 8 bytes, only 3 remain",
                   lay.tensors[1].info_at, lay.tensors[1].ne_at + 8)});
}

TEST(GgufCorrupt, TruncatedTensorData) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  image.resize(image.size() - 1);
  // The last tensor (8 f32) is cut by one byte.
  const uint64_t off = lay.tensors[2].data_at - lay.data_at;
  expect_reject<FormatError>(
      image, {fmt::format("tensor 'output_norm.weight' (info at byte {}): data [offset {}, {}+32) "
                          "extends past end of file (data section starts at byte {}, file size {})",
                          lay.tensors[2].info_at, off, off, lay.data_at, image.size())});
}

TEST(GgufCorrupt, NDimsFive) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  GgufWriter::put_u32(image, lay.tensors[0].n_dims_at, 5);
  expect_reject<FormatError>(image,
                             {fmt::format("tensor 'token_embd.weight' (info at byte {}): n_dims "
                                          "at byte {} is 5, expected 1..4",
                                          lay.tensors[0].info_at, lay.tensors[0].n_dims_at)});
  GgufWriter::put_u32(image, lay.tensors[0].n_dims_at, 0);
  expect_reject<FormatError>(image, {"n_dims at byte", "is 0, expected 1..4"});
}

TEST(GgufCorrupt, ZeroDimension) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  GgufWriter::put_u64(image, lay.tensors[0].ne_at + 8, 0);
  expect_reject<FormatError>(image, {fmt::format("dimension ne[1] at byte {} is 0, expected 1..",
                                                 lay.tensors[0].ne_at + 8)});
}

TEST(GgufCorrupt, DimensionProductOverflow) {
  GgufWriter w;
  w.add_raw_tensor("big", 0, {uint64_t{1} << 32, uint64_t{1} << 32}, {});
  const auto lay = w.layout();
  expect_reject<FormatError>(w.bytes(),
                             {fmt::format("tensor 'big' (info at byte {}): dimensions "
                                          "overflow: the product of ne[0..1] exceeds int64",
                                          lay.tensors[0].info_at)});
  GgufWriter w2;
  w2.add_raw_tensor("neg", 0, {uint64_t{1} << 63}, {});
  expect_reject<FormatError>(w2.bytes(), {"dimension ne[0] at byte", "is 9223372036854775808"});
}

TEST(GgufCorrupt, DataByteCountOverflow) {
  // 2^62 elements fit in int64, but as f32 they need 2^64 bytes.
  GgufWriter w;
  w.add_raw_tensor("wide", 0, {uint64_t{1} << 60, 4}, {});
  expect_reject<FormatError>(w.bytes(), {"tensor 'wide'",
                                         "data size overflows: 4 rows of "
                                         "4611686018427387904 bytes"});
}

TEST(GgufCorrupt, UnknownTensorType) {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  w.add_raw_tensor("blk.0.ffn_down.weight", 77, {32, 2}, bytes_of(64));
  const auto lay = w.layout();
  expect_reject<UnsupportedError>(
      w.bytes(), {fmt::format("tensor 'blk.0.ffn_down.weight' (info at byte {}): unknown or "
                              "unsupported tensor type id 77 at byte {}",
                              lay.tensors[0].info_at, lay.tensors[0].type_at)});
}

TEST(GgufCorrupt, RowNotMultipleOfBlockSize) {
  GgufWriter w;
  w.add_raw_tensor("q", static_cast<uint32_t>(DType::Q4_1), {33, 1}, bytes_of(64));
  expect_reject<FormatError>(w.bytes(), {"tensor 'q'",
                                         "ne[0] = 33 is not a multiple of the Q4_1 "
                                         "block size 32"});
}

TEST(GgufCorrupt, MisalignedOffset) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  GgufWriter::put_u64(image, lay.tensors[1].offset_at, 100);
  expect_reject<FormatError>(image,
                             {fmt::format("tensor 'blk.0.attn_q.weight' (info at byte {}): data "
                                          "offset 100 at byte {} is not a multiple of the "
                                          "alignment 32",
                                          lay.tensors[1].info_at, lay.tensors[1].offset_at)});
}

TEST(GgufCorrupt, OffsetPastEndOfFile) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  GgufWriter::put_u64(image, lay.tensors[1].offset_at, uint64_t{1} << 20);
  expect_reject<FormatError>(image,
                             {fmt::format("tensor 'blk.0.attn_q.weight' (info at byte {}): data "
                                          "[offset 1048576, 1048576+68) extends past end of "
                                          "file",
                                          lay.tensors[1].info_at)});
  // An offset near 2^64 must not wrap around in the bound check.
  GgufWriter::put_u64(image, lay.tensors[1].offset_at, ~uint64_t{31});
  expect_reject<FormatError>(image, {"extends past end of file"});
}

TEST(GgufCorrupt, OverlappingTensors) {
  auto w = small_model();
  const auto lay = w.layout();
  auto image = w.bytes();
  const uint64_t q_off = GgufWriter::get_u64(image, lay.tensors[1].offset_at);
  GgufWriter::put_u64(image, lay.tensors[2].offset_at, q_off + 32);
  expect_reject<FormatError>(
      image, {fmt::format("tensor 'output_norm.weight' (info at byte {}): data "
                          "[offset {}, {}+32) overlaps tensor 'blk.0.attn_q.weight' "
                          "data [offset {}, {}+68)",
                          lay.tensors[2].info_at, q_off + 32, q_off + 32, q_off, q_off)});
}

TEST(GgufCorrupt, DuplicateTensorName) {
  auto w = small_model();
  w.add_tensor("blk.0.attn_q.weight", DType::Q8_0, {32, 1}, bytes_of(34));
  const auto lay = w.layout();
  expect_reject<FormatError>(w.bytes(),
                             {fmt::format("tensor 'blk.0.attn_q.weight' (info at byte {}): "
                                          "duplicate tensor name (first defined by the "
                                          "info at byte {})",
                                          lay.tensors[3].info_at, lay.tensors[1].info_at)});
}

TEST(GgufCorrupt, EmptyTensorName) {
  GgufWriter w;
  w.add_tensor("", {4}, std::vector<float>(4, 0.0f));
  expect_reject<FormatError>(w.bytes(), {"tensor info #0 (at byte 24): empty tensor name"});
}

TEST(GgufCorrupt, WrongValueTypeForRequiredKey) {
  auto w = small_model();
  w.add_str("llama.context_length", "8192");
  auto f = GgufFile::from_bytes(w.bytes(), kName);
  try {
    f->metadata().get<uint32_t>("llama.context_length");
    ADD_FAILURE() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_STREQ(e.what(),
                 "models/x.gguf: key 'llama.context_length': expected an unsigned integer, found "
                 "string");
  }
}

TEST(GgufCorrupt, TruncatedFileOnDisk) {
  auto image = small_model().bytes();
  image.resize(image.size() / 2);
  const auto path = (test::temp_dir() / "half.gguf").string();
  {
    std::FILE* fp = std::fopen(path.c_str(), "wb");
    ASSERT_NE(fp, nullptr);
    std::fwrite(image.data(), 1, image.size(), fp);
    std::fclose(fp);
  }
  try {
    GgufFile::open(path);
    ADD_FAILURE() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
  }
}

// Reads everything a parsed file exposes, so out-of-bounds views would show under ASan.
uint64_t touch_everything(const GgufFile& f) {
  uint64_t sum = 0;
  for (const auto& k : f.metadata().keys())
    sum += gguf::format_value(*f.metadata().value(k), 64).size();
  for (const auto& t : f.tensors()) {
    const auto* p = reinterpret_cast<const uint8_t*>(t.data);
    for (uint64_t i = 0; i < t.n_bytes; ++i) sum += p[i];
    EXPECT_EQ(f.find_tensor(t.name), &t);
  }
  return sum;
}

// Parses a mutated image: success or spillway::Error, nothing else.
void parse_or_error(const std::vector<uint8_t>& image, int* parsed, int* rejected) {
  try {
    auto f = GgufFile::from_bytes(image, "mutant.gguf");
    touch_everything(*f);
    ++*parsed;
  } catch (const Error&) {
    ++*rejected;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "non-spillway exception: " << e.what();
  }
}

TEST(GgufCorrupt, RandomMutationsParseOrThrowNeverCrash) {
  GgufWriter w = small_model();
  w.add("nested",
        Value(Value::Storage(Array{
            ValueType::ARRAY,
            {Value(Value::Storage(Array{
                 ValueType::INT16, {Value(Value::Storage(std::in_place_index<3>, int16_t{-3}))}})),
             Value(Value::Storage(Array{ValueType::INT16, {}}))}})));
  w.add_bool("flag", true);
  w.add_i32s("ints", {1, 2, 3});
  const auto base = w.bytes();
  const auto lay = w.layout();
  std::mt19937_64 rng(20240531);
  int parsed = 0, rejected = 0;

  // Truncations at every 1/64 of the file.
  for (int k = 0; k < 64; ++k)
    parse_or_error({base.begin(), base.begin() + base.size() * k / 64}, &parsed, &rejected);
  // Bit flips (1 to 4 bits).
  for (int i = 0; i < 3000; ++i) {
    auto m = base;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int j = 0; j < flips; ++j) m[rng() % m.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    parse_or_error(m, &parsed, &rejected);
  }
  // Random byte runs, in the header/infos part mostly.
  for (int i = 0; i < 2000; ++i) {
    auto m = base;
    const size_t limit = (i % 2 == 0) ? lay.data_at : m.size();
    const size_t at = rng() % limit;
    const size_t len = 1 + rng() % 16;
    for (size_t j = at; j < std::min(m.size(), at + len); ++j) m[j] = static_cast<uint8_t>(rng());
    parse_or_error(m, &parsed, &rejected);
  }
  // Extreme u64 values written over random 8-byte fields (lengths, counts, offsets, dims).
  const uint64_t extremes[] = {0,
                               1,
                               31,
                               32,
                               0x7fffffffffffffffull,
                               0x8000000000000000ull,
                               0xffffffffffffffffull,
                               0xfffffffffffffff0ull,
                               uint64_t{1} << 32};
  for (int i = 0; i < 2000; ++i) {
    auto m = base;
    const size_t at = rng() % (lay.data_at - 8);
    GgufWriter::put_u64(m, at, extremes[rng() % std::size(extremes)]);
    parse_or_error(m, &parsed, &rejected);
  }
  // Entirely random files, some starting with a valid magic and version.
  for (int i = 0; i < 500; ++i) {
    std::vector<uint8_t> m(rng() % 200);
    for (auto& b : m) b = static_cast<uint8_t>(rng());
    if (i % 2 == 0 && m.size() >= 8) {
      std::memcpy(m.data(), "GGUF", 4);
      GgufWriter::put_u32(m, 4, 3);
    }
    parse_or_error(m, &parsed, &rejected);
  }
  EXPECT_GT(rejected, 1000);
  EXPECT_GT(parsed, 0);  // flips inside tensor data leave a valid file
  EXPECT_EQ(parsed + rejected, 64 + 3000 + 2000 + 2000 + 500);
}

}  // namespace
}  // namespace spillway
