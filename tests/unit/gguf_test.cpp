// GGUF reader on well-formed files written by the test writer: metadata round trips of
// every value type, typed accessors and their errors, tensor lookup and views.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

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

template <size_t I, class T>
Value scalar(T x) {
  return Value(Value::Storage(std::in_place_index<I>, x));
}

Value array(ValueType t, std::vector<Value> items) {
  Array a;
  a.elem_type = t;
  a.items = std::move(items);
  return Value(Value::Storage(std::move(a)));
}

Value str(std::string s) {
  return Value(Value::Storage(std::move(s)));
}

std::unique_ptr<GgufFile> parse(const GgufWriter& w, const std::string& name = "mem.gguf") {
  return GgufFile::from_bytes(w.bytes(), name);
}

// Expects `f` to throw E whose message contains `sub`.
template <class E, class F>
void expect_error(F&& f, const std::string& sub) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one containing: " << sub;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(sub), std::string::npos)
        << "message: " << e.what() << "\nexpected substring: " << sub;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(Gguf, EveryScalarTypeRoundTrips) {
  std::vector<std::pair<std::string, Value>> kvs = {
      {"t.u8", scalar<0>(uint8_t{255})},
      {"t.i8", scalar<1>(int8_t{-128})},
      {"t.u16", scalar<2>(uint16_t{65535})},
      {"t.i16", scalar<3>(int16_t{-32768})},
      {"t.u32", scalar<4>(uint32_t{4000000000u})},
      {"t.i32", scalar<5>(int32_t{-2000000000})},
      {"t.f32", scalar<6>(-1.5e-7f)},
      {"t.bool_true", scalar<7>(true)},
      {"t.bool_false", scalar<7>(false)},
      {"t.str", str("héllo, wörld")},
      {"t.empty_str", str("")},
      {"t.u64", scalar<10>(std::numeric_limits<uint64_t>::max())},
      {"t.i64", scalar<11>(std::numeric_limits<int64_t>::min())},
      {"t.f64", scalar<12>(3.141592653589793)},
      {"t.f32_negzero", scalar<6>(-0.0f)},
  };
  GgufWriter w;
  for (auto& [k, v] : kvs) w.add(k, v);
  auto f = parse(w);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_TRUE(f->tensors().empty());
  ASSERT_EQ(f->metadata().size(), kvs.size());
  for (size_t i = 0; i < kvs.size(); ++i) {
    EXPECT_EQ(f->metadata().keys()[i], kvs[i].first);
    const Value* v = f->metadata().value(kvs[i].first);
    ASSERT_NE(v, nullptr) << kvs[i].first;
    EXPECT_EQ(v->type(), kvs[i].second.type()) << kvs[i].first;
    EXPECT_TRUE(*v == kvs[i].second) << kvs[i].first;
  }
  EXPECT_TRUE(std::signbit(f->metadata().get<float>("t.f32_negzero")));
}

TEST(Gguf, ArraysRoundTripIncludingNestedAndEmpty) {
  Value ints = array(ValueType::INT32,
                     {scalar<5>(int32_t{1}), scalar<5>(int32_t{-2}), scalar<5>(int32_t{3})});
  Value strings = array(ValueType::STRING, {str("a"), str(""), str("<|im_end|>"), str("Ġthe")});
  Value empty_u8 = array(ValueType::UINT8, {});
  Value empty_str = array(ValueType::STRING, {});
  Value nested =
      array(ValueType::ARRAY,
            {array(ValueType::UINT16, {scalar<2>(uint16_t{7})}), array(ValueType::UINT16, {}),
             array(ValueType::UINT16, {scalar<2>(uint16_t{8}), scalar<2>(uint16_t{9})})});
  Value nested_strings = array(ValueType::ARRAY, {array(ValueType::STRING, {str("x"), str("yz")}),
                                                  array(ValueType::STRING, {})});
  Value deep = scalar<11>(int64_t{42});
  for (int i = 0; i < gguf::kMaxArrayDepth; ++i) deep = array(deep.type(), {deep});
  Value doubles = array(ValueType::FLOAT64, {scalar<12>(1.0), scalar<12>(-2.5)});
  Value bools = array(ValueType::BOOL, {scalar<7>(true), scalar<7>(false)});

  GgufWriter w;
  w.add("a.ints", ints);
  w.add("a.strings", strings);
  w.add("a.empty_u8", empty_u8);
  w.add("a.empty_str", empty_str);
  w.add("a.nested", nested);
  w.add("a.nested_strings", nested_strings);
  w.add("a.deep", deep);
  w.add("a.doubles", doubles);
  w.add("a.bools", bools);
  w.add_f32s("a.f32s", {0.5f, -1.0f});
  w.add_i32s("a.i32s", {});
  w.add_strings("a.more_strings", {"one", "two"});
  auto f = parse(w);
  const auto& m = f->metadata();
  EXPECT_TRUE(*m.value("a.ints") == ints);
  EXPECT_TRUE(*m.value("a.strings") == strings);
  EXPECT_TRUE(*m.value("a.empty_u8") == empty_u8);
  EXPECT_TRUE(*m.value("a.empty_str") == empty_str);
  EXPECT_TRUE(*m.value("a.nested") == nested);
  EXPECT_TRUE(*m.value("a.nested_strings") == nested_strings);
  EXPECT_TRUE(*m.value("a.deep") == deep);
  EXPECT_TRUE(*m.value("a.doubles") == doubles);
  EXPECT_TRUE(*m.value("a.bools") == bools);
  EXPECT_FALSE(*m.value("a.ints") == strings);

  EXPECT_EQ(m.get_ints("a.ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(m.get_ints("a.i32s"), (std::vector<int64_t>{}));
  EXPECT_EQ(m.get_ints("a.empty_u8"), (std::vector<int64_t>{}));
  EXPECT_EQ(m.get_strings("a.strings"), (std::vector<std::string>{"a", "", "<|im_end|>", "Ġthe"}));
  EXPECT_EQ(m.get_strings("a.more_strings"), (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(m.get_floats("a.f32s"), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_EQ(m.get_floats("a.doubles"), (std::vector<float>{1.0f, -2.5f}));
  EXPECT_EQ(m.value("a.nested")->describe(), "array of array (3 items)");
  EXPECT_EQ(gguf::format_value(*m.value("a.ints")), "[1, -2, 3]");
  EXPECT_EQ(gguf::format_value(*m.value("a.strings"), 2), "[a, , ... (4 items)]");
  EXPECT_EQ(gguf::format_value(*m.value("a.nested")), "[[7], [], [8, 9]]");
  EXPECT_EQ(gguf::format_value(*m.value("a.empty_u8")), "[]");

  expect_error<FormatError>([&] { m.get_strings("a.ints"); },
                            "mem.gguf: key 'a.ints': expected an array of strings, found array of "
                            "int32 (3 items)");
  expect_error<FormatError>(
      [&] { m.get_ints("a.strings"); },
      "key 'a.strings': expected an array of integers, found array of string");
  expect_error<FormatError>([&] { m.get_floats("a.ints"); },
                            "key 'a.ints': expected an array of floats");
  expect_error<FormatError>([&] { m.get_ints("a.missing"); }, "mem.gguf: missing key 'a.missing'");
}

TEST(Gguf, ArrayOfU64BeyondInt64IsRejectedByGetInts) {
  GgufWriter w;
  w.add("big", array(ValueType::UINT64,
                     {scalar<10>(uint64_t{1}), scalar<10>(std::numeric_limits<uint64_t>::max())}));
  auto f = parse(w);
  expect_error<FormatError>([&] { f->metadata().get_ints("big"); },
                            "key 'big': element 1 = 18446744073709551615 does not fit in int64");
}

TEST(Gguf, TypedAccessorsConvertLosslesslyOrThrow) {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  w.add_str("llama.block_count", "thirty");
  w.add_u32("llama.embedding_length", 576);
  w.add("small", scalar<0>(uint8_t{9}));
  w.add_i32("negative", -1);
  w.add_u64("huge", uint64_t{1} << 40);
  w.add_f32("rope", 100000.0f);
  w.add("f64", scalar<12>(0.25));
  w.add_bool("flag", true);
  auto f = parse(w, "models/x.gguf");
  const auto& m = f->metadata();
  EXPECT_EQ(m.get<std::string>("general.architecture"), "llama");
  EXPECT_EQ(m.get<uint32_t>("llama.embedding_length"), 576u);
  EXPECT_EQ(m.get<int64_t>("llama.embedding_length"), 576);
  EXPECT_EQ(m.get<uint16_t>("small"), 9);
  EXPECT_EQ(m.get<int32_t>("negative"), -1);
  EXPECT_EQ(m.get<int64_t>("negative"), -1);
  EXPECT_EQ(m.get<uint64_t>("huge"), uint64_t{1} << 40);
  EXPECT_EQ(m.get<float>("rope"), 100000.0f);
  EXPECT_EQ(m.get<double>("f64"), 0.25);
  EXPECT_EQ(m.get<bool>("flag"), true);
  EXPECT_EQ(m.find<uint32_t>("absent"), std::nullopt);
  EXPECT_EQ(m.find<uint32_t>("llama.embedding_length"), 576u);
  EXPECT_TRUE(m.contains("flag"));
  EXPECT_FALSE(m.contains("absent"));

  expect_error<FormatError>([&] { m.get<uint32_t>("llama.block_count"); },
                            "models/x.gguf: key 'llama.block_count': expected an unsigned integer, "
                            "found string");
  expect_error<FormatError>([&] { m.find<int32_t>("llama.block_count"); },
                            "key 'llama.block_count': expected an integer, found string");
  expect_error<FormatError>([&] { m.get<uint32_t>("negative"); },
                            "key 'negative': value -1 (int32) does not fit in uint32");
  expect_error<FormatError>([&] { m.get<int32_t>("huge"); },
                            "key 'huge': value 1099511627776 (uint64) does not fit in int32");
  expect_error<FormatError>([&] { m.get<float>("llama.embedding_length"); },
                            "key 'llama.embedding_length': expected a float, found uint32");
  expect_error<FormatError>([&] { m.get<bool>("small"); },
                            "key 'small': expected a bool, found uint8");
  expect_error<FormatError>([&] { m.get<std::string>("flag"); },
                            "key 'flag': expected a string, found bool");
  expect_error<FormatError>([&] { m.get<uint32_t>("llama.context_length"); },
                            "models/x.gguf: missing key 'llama.context_length'");
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

TEST(Gguf, TensorsAreLocatedAndViewed) {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  std::vector<float> embd(8 * 3);
  for (size_t i = 0; i < embd.size(); ++i) embd[i] = 0.5f * static_cast<float>(i) - 3.0f;
  w.add_tensor("token_embd.weight", {8, 3}, embd);
  w.add_tensor("blk.0.attn_q.weight", DType::Q8_0, {64, 2}, pattern(2 * 2 * 34, 1));
  w.add_tensor("blk.0.ffn_up.weight", DType::Q4_1, {32, 3, 2}, pattern(6 * 20, 5));
  w.add_tensor("norm", DType::F16, {5}, pattern(10, 9));
  w.add_tensor("k4", DType::Q4_K, {256, 1, 1, 2}, pattern(2 * 144, 3));
  const auto image = w.bytes();
  const auto lay = w.layout();
  auto f = GgufFile::from_bytes(image, "t.gguf");
  ASSERT_EQ(f->tensors().size(), 5u);
  EXPECT_EQ(f->data_offset(), lay.data_at);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  EXPECT_EQ(f->file_size(), image.size());

  const auto& e = f->tensor("token_embd.weight");
  EXPECT_EQ(e.type, DType::F32);
  EXPECT_EQ(e.n_dims, 2);
  EXPECT_EQ(e.ne, (std::array<int64_t, 4>{8, 3, 1, 1}));
  EXPECT_EQ(e.n_elements(), 24);
  EXPECT_EQ(e.n_rows(), 3);
  EXPECT_EQ(e.n_bytes, 96u);
  EXPECT_EQ(e.row_bytes(), 32u);
  EXPECT_EQ(e.offset, 0u);
  EXPECT_EQ(e.info_offset, lay.tensors[0].info_at);
  std::vector<float> back(24);
  std::memcpy(back.data(), e.data, 96);
  EXPECT_EQ(back, embd);

  const auto* q = f->find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, DType::Q8_0);
  EXPECT_EQ(q->n_bytes, 136u);
  EXPECT_EQ(q->row_bytes(), 68u);
  EXPECT_EQ(q->offset, 96u);
  const auto want_q = pattern(136, 1);
  EXPECT_EQ(std::memcmp(q->data, want_q.data(), 136), 0);

  const auto& up = f->tensor("blk.0.ffn_up.weight");
  EXPECT_EQ(up.n_dims, 3);
  EXPECT_EQ(up.n_rows(), 6);
  EXPECT_EQ(up.n_bytes, 120u);
  EXPECT_EQ(up.offset % 32, 0u);
  EXPECT_EQ(f->tensor("norm").n_bytes, 10u);
  EXPECT_EQ(f->tensor("k4").n_dims, 4);
  EXPECT_EQ(f->tensor("k4").n_bytes, 288u);
  for (size_t i = 0; i < f->tensors().size(); ++i) {
    const auto& t = f->tensors()[i];
    EXPECT_EQ(reinterpret_cast<const uint8_t*>(t.data) - reinterpret_cast<const uint8_t*>(e.data),
              static_cast<ptrdiff_t>(lay.tensors[i].data_at - lay.data_at));
  }
  EXPECT_EQ(f->find_tensor("absent"), nullptr);
  expect_error<FormatError>([&] { f->tensor("output.weight"); },
                            "t.gguf: missing tensor 'output.weight'");
}

TEST(Gguf, CustomAlignmentAndVersion2) {
  GgufWriter w;
  w.set_version(2);
  w.set_alignment(64);
  w.add_str("general.name", "x");
  w.add_tensor("a", {3}, std::vector<float>{1, 2, 3});
  w.add_tensor("b", {5}, std::vector<float>{1, 2, 3, 4, 5});
  auto f = parse(w);
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->metadata().get<uint32_t>("general.alignment"), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->tensor("b").offset, 64u);
  EXPECT_EQ(f->tensor("b").n_bytes, 20u);
}

TEST(Gguf, OpensFromDiskByMapping) {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  w.add_tensor("w", {4, 2}, std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8});
  const auto path = (test::temp_dir() / "m.gguf").string();
  w.write(path);
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->metadata().source, path);
  float x[8];
  std::memcpy(x, f->tensor("w").data, sizeof(x));
  EXPECT_EQ(x[7], 8.0f);
  expect_error<IoError>([&] { GgufFile::open(path + ".absent"); }, "m.gguf.absent: cannot open");
  expect_error<IoError>([&] { GgufFile::open(test::temp_dir().string()); }, "not a regular file");
}

TEST(Gguf, FileWithoutTensorsNeedsNoPadding) {
  GgufWriter w;
  w.add_str("general.name", "abc");  // header 24 + 8+12 + 4 + 8+3 = 59 bytes, unpadded
  auto image = w.bytes();
  image.resize(w.layout().tensor_infos_at);
  auto f = GgufFile::from_bytes(image, "nt.gguf");
  EXPECT_EQ(f->metadata().get<std::string>("general.name"), "abc");
  EXPECT_TRUE(f->tensors().empty());
}

TEST(Gguf, MetadataAddRejectsDuplicates) {
  gguf::Metadata m;
  m.source = "built";
  m.add("k", str("v"), "entry 0");
  expect_error<FormatError>([&] { m.add("k", str("w"), "entry 1"); },
                            "built: duplicate key 'k' (entry 1)");
}

}  // namespace
}  // namespace spillway
