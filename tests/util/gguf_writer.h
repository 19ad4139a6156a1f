// A small GGUF writer for tests: builds tiny models, tokenizers and (by patching bytes at
// the offsets layout() reports) deliberately corrupt files.
//
// Usage:
//   spillway::test::GgufWriter w;
//   w.add_str("general.architecture", "llama");
//   w.add_u32("llama.block_count", 2);
//   w.add_tensor("token_embd.weight", {8, 16}, embd_values);        // F32, ne = {8, 16}
//   w.add_tensor("blk.0.attn_q.weight", DType::Q8_0, {32, 4}, q8_bytes);
//   auto f = gguf::GgufFile::from_bytes(w.bytes(), "tiny.gguf");    // or w.write(path)
//
// The file is laid out as the format says: header (magic, version, tensor_count,
// kv_count), key/values in the order added, tensor infos in the order added, padding to
// the alignment, then each tensor's data at the next multiple of the alignment. Shapes are
// in ggml order (ne[0] is the contiguous dimension). Keys and tensor names are written as
// given, duplicates included, so tests can produce files the reader must reject.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spillway/core/types.h"
#include "spillway/gguf/gguf.h"

namespace spillway::test {

class GgufWriter {
 public:
  // Fixed header fields' byte offsets.
  static constexpr uint64_t kVersionAt = 4;
  static constexpr uint64_t kTensorCountAt = 8;
  static constexpr uint64_t kKvCountAt = 16;
  static constexpr uint64_t kHeaderBytes = 24;

  // Where things landed in bytes(); all offsets are absolute file bytes.
  struct KvLayout {
    uint64_t at = 0;        // start of the entry (its key length)
    uint64_t type_at = 0;   // the u32 value type
    uint64_t value_at = 0;  // the value (for a string: its u64 length; for an array: its
                            // u32 element type)
  };
  struct TensorLayout {
    uint64_t info_at = 0;    // start of the info (its name length)
    uint64_t n_dims_at = 0;  // u32 n_dims
    uint64_t ne_at = 0;      // n_dims u64 dimensions
    uint64_t type_at = 0;    // u32 type id
    uint64_t offset_at = 0;  // u64 data offset (relative to the data section)
    uint64_t data_at = 0;    // first byte of the data
  };
  struct Layout {
    std::vector<KvLayout> kvs;          // in the order added
    uint64_t tensor_infos_at = 0;       // first tensor info (= end of the metadata)
    std::vector<TensorLayout> tensors;  // in the order added
    uint64_t data_at = 0;               // start of the data section
    uint64_t size = 0;                  // total file size
  };

  // Version written in the header (default 3).
  void set_version(uint32_t v) { version_ = v; }
  // Alignment used for padding; also writes (or rewrites) general.alignment as a uint32
  // key at the place of the first call. Throws InvalidArgument above 2^32-1; 0 means
  // "no padding" (and makes a file the reader rejects).
  void set_alignment(uint64_t alignment);

  // Adds a key/value (in order; duplicates are kept).
  void add(std::string key, gguf::Value v);
  // Gives the first entry of `key` this value (type included), or adds it when absent.
  void replace(const std::string& key, gguf::Value v);
  void add_u32(std::string key, uint32_t v);
  void add_i32(std::string key, int32_t v);
  void add_u64(std::string key, uint64_t v);
  void add_f32(std::string key, float v);
  void add_bool(std::string key, bool v);
  void add_str(std::string key, std::string v);
  void add_strings(std::string key, const std::vector<std::string>& v);
  void add_i32s(std::string key, const std::vector<int32_t>& v);
  void add_f32s(std::string key, const std::vector<float>& v);

  // Adds a tensor of `type` with dimensions ne (ggml order, 1..4 entries) and its raw
  // bytes. Throws InvalidArgument when data.size() is not the size the shape and type
  // need (use add_raw_tensor to write inconsistent infos on purpose).
  void add_tensor(std::string name, DType type, std::vector<int64_t> ne, std::vector<uint8_t> data);
  // An F32 tensor from its values (values.size() must equal the element count).
  void add_tensor(std::string name, std::vector<int64_t> ne, const std::vector<float>& values);
  // Writes the info exactly as given (any type id, any number of dimensions) and `data`
  // as the tensor's bytes; no checks.
  void add_raw_tensor(std::string name, uint32_t type_id, std::vector<uint64_t> ne,
                      std::vector<uint8_t> data);

  // The whole file image, and where its parts are.
  std::vector<uint8_t> bytes() const;
  Layout layout() const;
  // Writes bytes() to path; throws IoError when it cannot.
  void write(const std::string& path) const;

  // Little-endian patch helpers for corruption tests.
  static void put_u32(std::vector<uint8_t>& image, uint64_t at, uint32_t v);
  static void put_u64(std::vector<uint8_t>& image, uint64_t at, uint64_t v);
  static uint64_t get_u64(const std::vector<uint8_t>& image, uint64_t at);

 private:
  struct Kv {
    std::string key;
    gguf::Value value;
  };
  struct Tensor {
    std::string name;
    uint32_t type_id;
    std::vector<uint64_t> ne;
    std::vector<uint8_t> data;
  };
  std::vector<uint8_t> build(Layout* layout) const;

  uint32_t version_ = 3;
  uint64_t alignment_ = gguf::kDefaultAlignment;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace spillway::test
