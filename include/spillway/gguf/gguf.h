// Memory-mapped, read-only GGUF (v2 and v3) reader. Every field is validated before use
// with overflow-safe arithmetic; a malformed file raises FormatError (or IoError when it
// cannot be read) whose message names the file, the key or tensor, the byte offset, and
// expected vs found. Nothing here exits or aborts.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/core/types.h"

namespace spillway::gguf {

enum class ValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

// "uint32", "string", "array", ... ("unknown" for an id outside the enum).
std::string_view value_type_name(ValueType t);

class Value;

// An array value: element type and elements (arrays may nest).
struct Array {
  ValueType elem_type = ValueType::UINT8;
  std::vector<Value> items;

  friend bool operator==(const Array& a, const Array& b);
};

// One metadata value. Scalars, strings and arrays.
class Value {
 public:
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, Array, uint64_t, int64_t, double>;
  Value() = default;
  explicit Value(Storage s) : v_(std::move(s)) {}

  ValueType type() const { return static_cast<ValueType>(v_.index()); }
  const Storage& storage() const { return v_; }

  bool is_integer() const;
  // Lossless integer conversion; nullopt when not an integer type or out of range.
  template <class T>
  std::optional<T> to_integer() const;
  // Float/double (or nullopt).
  std::optional<double> to_double() const;
  const std::string* string() const { return std::get_if<std::string>(&v_); }
  const Array* array() const { return std::get_if<Array>(&v_); }
  std::optional<bool> to_bool() const;
  // "uint32", "string", "array of string (3 items)": names what a value holds, for
  // messages.
  std::string describe() const;

  // Same type and value (floats compare as numbers: NaN differs from itself).
  friend bool operator==(const Value& a, const Value& b) { return a.v_ == b.v_; }

 private:
  Storage v_;
};

inline bool operator==(const Array& a, const Array& b) {
  return a.elem_type == b.elem_type && a.items == b.items;
}

// Renders a value for people: numbers and bools as text, strings as they are, arrays as
// "[a, b, c, ... (N items)]" showing at most max_items elements.
std::string format_value(const Value& v, size_t max_items = 8);

// Key/value metadata in file order, with lookup by key.
class Metadata {
 public:
  // Typed access. T is an integer type (any stored integer type whose value fits is
  // accepted), float/double (FLOAT32 or FLOAT64), bool, or std::string.
  // get: throws FormatError naming the key when it is missing or of another type.
  template <class T>
  T get(const std::string& key) const;
  // find: nullopt when missing; throws FormatError when present with another type.
  template <class T>
  std::optional<T> find(const std::string& key) const;
  // Array accessors: an array of strings / of integers (any integer element type whose
  // values fit in int64) / of floats (FLOAT32 or FLOAT64), or throws FormatError naming
  // the key (also when missing).
  std::vector<std::string> get_strings(const std::string& key) const;
  std::vector<int64_t> get_ints(const std::string& key) const;
  std::vector<float> get_floats(const std::string& key) const;

  const Value* value(const std::string& key) const;
  bool contains(const std::string& key) const { return value(key) != nullptr; }
  // Keys in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  size_t size() const { return keys_.size(); }

  // Used by the reader (and by test writers): throws FormatError on a duplicate key;
  // `where` says where the key was found ("at byte 120") and goes into the message.
  void add(std::string key, Value v, const std::string& where);
  std::string source;  // file name used in error messages

 private:
  std::vector<std::string> keys_;
  std::map<std::string, Value, std::less<>> values_;
};

// One tensor, as described by its info record and located in the mapped data section.
struct TensorInfo {
  std::string name;
  DType type = DType::F32;
  int n_dims = 0;
  std::array<int64_t, 4> ne{1, 1, 1, 1};  // ggml order: ne[0] is the contiguous dimension
  uint64_t offset = 0;                    // from the start of the data section
  uint64_t n_bytes = 0;
  const std::byte* data = nullptr;  // into the mapping; valid while the file lives
  uint64_t info_offset = 0;         // file byte where this tensor's info record starts

  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  uint64_t row_bytes() const { return n_bytes / static_cast<uint64_t>(n_rows()); }
};

// Limits the reader enforces on top of the format itself.
inline constexpr int kMaxArrayDepth = 8;  // arrays nested deeper are rejected
// Elements of all metadata arrays of one file together (each costs sizeof(Value) in memory,
// ~40 bytes, though a uint8 element takes 1 byte of the file); the largest vocabularies
// (262,144 tokens with scores and types, plus merges) need about 1M.
inline constexpr uint64_t kMaxArrayItems = uint64_t{1} << 24;
inline constexpr uint64_t kDefaultAlignment = 32;  // when general.alignment is absent

// A validated GGUF file. Checks done by open/from_bytes, each failing with FormatError
// unless noted: magic "GGUF"; version 2 or 3 (1, newer versions and big-endian files:
// UnsupportedError); counts plausible against the file size before anything is
// allocated; every string, array and value inside the file; array nesting at most
// kMaxArrayDepth and at most kMaxArrayItems array elements in all; no duplicate keys;
// general.alignment a nonzero power of two of type uint32; per tensor: a non-empty unique
// name, 1..4 dimensions each > 0 whose product fits in int64, a known type (else UnsupportedError
// naming the tensor and the id), ne[0] a multiple of the type's block size, an offset aligned to
// the alignment and data inside the file, and no two tensors' data overlapping.
class GgufFile {
 public:
  // Maps and validates the file. Throws IoError / FormatError / UnsupportedError.
  //
  // The mapping (read-only, MAP_PRIVATE) reads the file itself for as long as this object
  // (and any model bound to it) lives, so the file must stay as it was:
  // - truncated while mapped: the next read of a page past the new end raises SIGBUS,
  //   which kills the process (no exception can report it);
  // - rewritten in place (same inode): pages not yet read show the new bytes: weights
  //   change silently (validation ran once, at open);
  // - replaced by rename(2) (a new inode at the path, as package managers and `mv` do):
  //   safe, the mapping keeps the old file alive.
  // To be immune to the first two, read the file into memory and use from_bytes (it costs
  // the file's size in RAM) and bind it with model::architectures().
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // Validates a file image held in memory (copied); `name` is used in messages.
  static std::unique_ptr<GgufFile> from_bytes(std::vector<uint8_t> bytes, std::string name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t file_size() const { return size_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const Metadata& metadata() const { return meta_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* find_tensor(std::string_view name) const;
  // Throws FormatError naming the tensor when absent.
  const TensorInfo& tensor(std::string_view name) const;
  // Advice that this process no longer needs the whole pages inside [p, p + n) (a range of
  // the mapped file) resident, e.g. once a model has copied those weights: they leave its
  // resident memory and stay readable (a later read pages them in again from the file).
  // Does nothing for a file held in memory (from_bytes) or a range outside the file.
  void release_pages(const void* p, uint64_t n) const;

 private:
  GgufFile() = default;
  void parse();

  std::string path_;
  const std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  void* mapping_ = nullptr;     // mmap'd region (nullptr for from_bytes)
  std::vector<uint8_t> owned_;  // bytes held for from_bytes
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  Metadata meta_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

}  // namespace spillway::gguf
