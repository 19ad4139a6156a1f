#include "util/gguf_writer.h"

#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <limits>

#include "spillway/core/error.h"

namespace spillway::test {

namespace {

using gguf::Array;
using gguf::Value;
using gguf::ValueType;

// Grows out by resize + memcpy: GCC 12 reports false -Wstringop-overflow / -Warray-bounds
// for vector::insert of a few bytes into a small vector.
void append_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
  const size_t at = out.size();
  out.resize(at + n);
  std::memcpy(out.data() + at, p, n);
}

template <class T>
void append(std::vector<uint8_t>& out, T v) {
  append_bytes(out, &v, sizeof(T));
}

void append_string(std::vector<uint8_t>& out, const std::string& s) {
  append<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

// The value's payload (without its type id).
void append_value(std::vector<uint8_t>& out, const Value& v) {
  std::visit(
      [&](const auto& x) {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, std::string>) {
          append_string(out, x);
        } else if constexpr (std::is_same_v<X, Array>) {
          append<uint32_t>(out, static_cast<uint32_t>(x.elem_type));
          append<uint64_t>(out, x.items.size());
          for (const Value& item : x.items) append_value(out, item);
        } else if constexpr (std::is_same_v<X, bool>) {
          append<uint8_t>(out, x ? 1 : 0);
        } else {
          append<X>(out, x);
        }
      },
      v.storage());
}

void pad_to(std::vector<uint8_t>& out, uint64_t alignment) {
  if (alignment == 0) return;
  while (out.size() % alignment != 0) out.push_back(0);
}

template <class T>
Value array_of(ValueType t, const std::vector<T>& v) {
  Array a;
  a.elem_type = t;
  a.items.reserve(v.size());
  for (const T& x : v) a.items.emplace_back(Value::Storage(x));
  return Value(Value::Storage(std::move(a)));
}

}  // namespace

void GgufWriter::set_alignment(uint64_t alignment) {
  if (alignment > std::numeric_limits<uint32_t>::max()) {
    throw InvalidArgument(
        fmt::format("GgufWriter: alignment {} does not fit in uint32", alignment));
  }
  alignment_ = alignment;
  Value v(Value::Storage(std::in_place_index<4>, static_cast<uint32_t>(alignment)));
  for (Kv& kv : kvs_) {
    if (kv.key == "general.alignment") {
      kv.value = std::move(v);
      return;
    }
  }
  kvs_.push_back({"general.alignment", std::move(v)});
}

void GgufWriter::add(std::string key, gguf::Value v) {
  kvs_.push_back({std::move(key), std::move(v)});
}
void GgufWriter::replace(const std::string& key, gguf::Value v) {
  for (Kv& kv : kvs_) {
    if (kv.key == key) {
      kv.value = std::move(v);
      return;
    }
  }
  add(key, std::move(v));
}
void GgufWriter::add_u32(std::string key, uint32_t v) {
  add(std::move(key), Value(Value::Storage(std::in_place_index<4>, v)));
}
void GgufWriter::add_i32(std::string key, int32_t v) {
  add(std::move(key), Value(Value::Storage(std::in_place_index<5>, v)));
}
void GgufWriter::add_u64(std::string key, uint64_t v) {
  add(std::move(key), Value(Value::Storage(std::in_place_index<10>, v)));
}
void GgufWriter::add_f32(std::string key, float v) {
  add(std::move(key), Value(Value::Storage(std::in_place_index<6>, v)));
}
void GgufWriter::add_bool(std::string key, bool v) {
  add(std::move(key), Value(Value::Storage(std::in_place_index<7>, v)));
}
void GgufWriter::add_str(std::string key, std::string v) {
  add(std::move(key), Value(Value::Storage(std::in_place_index<8>, std::move(v))));
}
void GgufWriter::add_strings(std::string key, const std::vector<std::string>& v) {
  add(std::move(key), array_of(ValueType::STRING, v));
}
void GgufWriter::add_i32s(std::string key, const std::vector<int32_t>& v) {
  add(std::move(key), array_of(ValueType::INT32, v));
}
void GgufWriter::add_f32s(std::string key, const std::vector<float>& v) {
  add(std::move(key), array_of(ValueType::FLOAT32, v));
}

void GgufWriter::add_tensor(std::string name, DType type, std::vector<int64_t> ne,
                            std::vector<uint8_t> data) {
  if (ne.empty() || ne.size() > 4) {
    throw InvalidArgument(
        fmt::format("GgufWriter: tensor '{}': {} dimensions, expected 1..4", name, ne.size()));
  }
  uint64_t rows = 1;
  std::vector<uint64_t> une;
  for (int64_t d : ne) {
    if (d <= 0)
      throw InvalidArgument(fmt::format("GgufWriter: tensor '{}': dimension {}", name, d));
    une.push_back(static_cast<uint64_t>(d));
  }
  for (size_t i = 1; i < ne.size(); ++i) rows *= une[i];
  const auto rb = row_bytes(type, une[0]);
  if (!rb) {
    throw InvalidArgument(
        fmt::format("GgufWriter: tensor '{}': ne[0] = {} is not a multiple of the "
                    "{} block size",
                    name, ne[0], dtype_name(type)));
  }
  if (data.size() != *rb * rows) {
    throw InvalidArgument(
        fmt::format("GgufWriter: tensor '{}': {} bytes of data, the shape needs {}", name,
                    data.size(), *rb * rows));
  }
  tensors_.push_back(
      {std::move(name), static_cast<uint32_t>(type), std::move(une), std::move(data)});
}

void GgufWriter::add_tensor(std::string name, std::vector<int64_t> ne,
                            const std::vector<float>& values) {
  std::vector<uint8_t> data(values.size() * sizeof(float));
  if (!values.empty()) std::memcpy(data.data(), values.data(), data.size());
  add_tensor(std::move(name), DType::F32, std::move(ne), std::move(data));
}

void GgufWriter::add_raw_tensor(std::string name, uint32_t type_id, std::vector<uint64_t> ne,
                                std::vector<uint8_t> data) {
  tensors_.push_back({std::move(name), type_id, std::move(ne), std::move(data)});
}

std::vector<uint8_t> GgufWriter::build(Layout* layout) const {
  std::vector<uint8_t> out;
  Layout lay;
  append_bytes(out, "GGUF", 4);
  append<uint32_t>(out, version_);
  append<uint64_t>(out, tensors_.size());
  append<uint64_t>(out, kvs_.size());
  for (const Kv& kv : kvs_) {
    KvLayout k;
    k.at = out.size();
    append_string(out, kv.key);
    k.type_at = out.size();
    append<uint32_t>(out, static_cast<uint32_t>(kv.value.type()));
    k.value_at = out.size();
    append_value(out, kv.value);
    lay.kvs.push_back(k);
  }
  lay.tensor_infos_at = out.size();
  // Data offsets: each tensor at the next multiple of the alignment.
  std::vector<uint64_t> offsets;
  uint64_t next = 0;
  for (const Tensor& t : tensors_) {
    if (alignment_ != 0 && next % alignment_ != 0) next += alignment_ - next % alignment_;
    offsets.push_back(next);
    next += t.data.size();
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    TensorLayout tl;
    tl.info_at = out.size();
    append_string(out, t.name);
    tl.n_dims_at = out.size();
    append<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    tl.ne_at = out.size();
    for (uint64_t d : t.ne) append<uint64_t>(out, d);
    tl.type_at = out.size();
    append<uint32_t>(out, t.type_id);
    tl.offset_at = out.size();
    append<uint64_t>(out, offsets[i]);
    lay.tensors.push_back(tl);
  }
  pad_to(out, alignment_);
  lay.data_at = out.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.resize(lay.data_at + offsets[i], 0);
    lay.tensors[i].data_at = out.size();
    out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
  }
  lay.size = out.size();
  if (layout != nullptr) *layout = std::move(lay);
  return out;
}

std::vector<uint8_t> GgufWriter::bytes() const {
  return build(nullptr);
}

GgufWriter::Layout GgufWriter::layout() const {
  Layout lay;
  build(&lay);
  return lay;
}

void GgufWriter::write(const std::string& path) const {
  const std::vector<uint8_t> image = bytes();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw IoError(fmt::format("{}: cannot create", path));
  f.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
  if (!f) throw IoError(fmt::format("{}: cannot write {} bytes", path, image.size()));
}

void GgufWriter::put_u32(std::vector<uint8_t>& image, uint64_t at, uint32_t v) {
  if (at > image.size() || image.size() - at < 4) throw InvalidArgument("put_u32: out of range");
  std::memcpy(image.data() + at, &v, 4);
}
void GgufWriter::put_u64(std::vector<uint8_t>& image, uint64_t at, uint64_t v) {
  if (at > image.size() || image.size() - at < 8) throw InvalidArgument("put_u64: out of range");
  std::memcpy(image.data() + at, &v, 8);
}
uint64_t GgufWriter::get_u64(const std::vector<uint8_t>& image, uint64_t at) {
  if (at > image.size() || image.size() - at < 8) throw InvalidArgument("get_u64: out of range");
  uint64_t v;
  std::memcpy(&v, image.data() + at, 8);
  return v;
}

}  // namespace spillway::test
