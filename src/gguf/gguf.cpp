// GGUF v2/v3 reader: parsing and validation of the header, metadata and tensor infos,
// plus the typed metadata accessors.
#include "spillway/gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

namespace spillway::gguf {

namespace {

constexpr uint32_t kNumValueTypes = 13;
// Smallest encodings, used to reject counts that cannot fit in the bytes left:
// a key/value is at least a key length (8), a value type (4) and a one-byte value;
// a tensor info is at least a name length (8), n_dims (4), one dimension (8), a type
// (4) and an offset (8).
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
constexpr uint64_t kHeaderBytes = 4 + 4 + 8 + 8;

std::string_view name_or_default(const std::string& s) {
  return s.empty() ? std::string_view("<gguf>") : std::string_view(s);
}

// Bytes of the smallest encoding of one element of an array of type t.
uint64_t min_value_bytes(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL:
      return 1;
    case ValueType::UINT16:
    case ValueType::INT16:
      return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32:
      return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
    case ValueType::STRING:
      return 8;
    case ValueType::ARRAY:
      return 4 + 8;
  }
  return 1;
}

bool is_power_of_two(uint64_t x) {
  return x != 0 && (x & (x - 1)) == 0;
}

// Shortest text that reads back as the same float.
std::string float_text(float f) {
  return fmt::format("{}", f);
}

// A bounds-checked reading position in a file image. Every read says what it reads;
// errors name the file, the current context (key or tensor) and the byte offset.
class Cursor {
 public:
  Cursor(const std::byte* base, uint64_t size, std::string_view file)
      : base_(base), size_(size), file_(file) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  void set_context(std::string ctx) { context_ = std::move(ctx); }
  const std::string& context() const { return context_; }

  [[noreturn]] void fail(const std::string& msg) const {
    if (context_.empty()) throw FormatError(fmt::format("{}: {}", file_, msg));
    throw FormatError(fmt::format("{}: {}: {}", file_, context_, msg));
  }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      fail(
          fmt::format("truncated file: {} at byte {} needs {} bytes, only {} remain (file size {})",
                      what, pos_, n, remaining(), size_));
    }
  }

  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(std::string_view what) {
    const uint64_t at = pos_;
    const auto n = read<uint64_t>(what);
    if (n > remaining()) {
      fail(
          fmt::format("{} at byte {}: string length {} extends past end of file ({} bytes remain, "
                      "file size {})",
                      what, at, n, remaining(), size_));
    }
    std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }

  Value read_value(ValueType t, int depth) {
    using S = Value::Storage;
    switch (t) {
      case ValueType::UINT8:
        return Value(S(std::in_place_index<0>, read<uint8_t>("uint8 value")));
      case ValueType::INT8:
        return Value(S(std::in_place_index<1>, read<int8_t>("int8 value")));
      case ValueType::UINT16:
        return Value(S(std::in_place_index<2>, read<uint16_t>("uint16 value")));
      case ValueType::INT16:
        return Value(S(std::in_place_index<3>, read<int16_t>("int16 value")));
      case ValueType::UINT32:
        return Value(S(std::in_place_index<4>, read<uint32_t>("uint32 value")));
      case ValueType::INT32:
        return Value(S(std::in_place_index<5>, read<int32_t>("int32 value")));
      case ValueType::FLOAT32:
        return Value(S(std::in_place_index<6>, read<float>("float32 value")));
      case ValueType::BOOL: {
        const uint64_t at = pos_;
        const auto b = read<uint8_t>("bool value");
        if (b > 1) fail(fmt::format("bool value at byte {} is {}, expected 0 or 1", at, b));
        return Value(S(std::in_place_index<7>, b == 1));
      }
      case ValueType::STRING:
        return Value(S(std::in_place_index<8>, read_string("string value")));
      case ValueType::ARRAY:
        return Value(S(std::in_place_index<9>, read_array(depth + 1)));
      case ValueType::UINT64:
        return Value(S(std::in_place_index<10>, read<uint64_t>("uint64 value")));
      case ValueType::INT64:
        return Value(S(std::in_place_index<11>, read<int64_t>("int64 value")));
      case ValueType::FLOAT64:
        return Value(S(std::in_place_index<12>, read<double>("float64 value")));
    }
    fail(fmt::format("value type {} is unknown", static_cast<uint32_t>(t)));
  }

  ValueType read_value_type(std::string_view what) {
    const uint64_t at = pos_;
    const auto id = read<uint32_t>(what);
    if (id >= kNumValueTypes) {
      fail(fmt::format("{} at byte {} is {}, expected a value type id 0..{}", what, at, id,
                       kNumValueTypes - 1));
    }
    return static_cast<ValueType>(id);
  }

  // An array body (element type, count, elements); depth counts enclosing arrays.
  Array read_array(int depth) {
    if (depth > kMaxArrayDepth) {
      fail(fmt::format("arrays nested deeper than {} levels at byte {}", kMaxArrayDepth, pos_));
    }
    Array a;
    a.elem_type = read_value_type("array element type");
    const uint64_t at = pos_;
    const auto n = read<uint64_t>("array length");
    const uint64_t min_bytes = min_value_bytes(a.elem_type);
    if (n > remaining() / min_bytes) {
      fail(
          fmt::format("array length {} at byte {} extends past end of file ({} elements of {} need "
                      "at least {} bytes each, {} bytes remain, file size {})",
                      n, at, n, value_type_name(a.elem_type), min_bytes, remaining(), size_));
    }
    // Each element costs sizeof(Value) in memory but may take 1 byte of the file: a cap on
    // the elements of all arrays together bounds what a large file can make us allocate.
    if (n > kMaxArrayItems - array_items_) {
      fail(
          fmt::format("array length {} at byte {} takes the file's arrays past {} elements in "
                      "all ({} before it): beyond what this reader loads",
                      n, at, kMaxArrayItems, array_items_));
    }
    array_items_ += n;
    a.items.reserve(static_cast<size_t>(n));
    for (uint64_t i = 0; i < n; ++i) a.items.push_back(read_value(a.elem_type, depth));
    return a;
  }

  void seek(uint64_t p) { pos_ = p; }

 private:
  const std::byte* base_;
  uint64_t size_;
  std::string_view file_;
  uint64_t pos_ = 0;
  uint64_t array_items_ = 0;  // elements of every array read so far
  std::string context_;
};

template <class T>
constexpr bool kIsInteger = std::is_integral_v<T> && !std::is_same_v<T, bool>;

template <class T>
std::string_view integer_type_name() {
  if constexpr (std::is_signed_v<T>) {
    switch (sizeof(T)) {
      case 1:
        return "int8";
      case 2:
        return "int16";
      case 4:
        return "int32";
      default:
        return "int64";
    }
  } else {
    switch (sizeof(T)) {
      case 1:
        return "uint8";
      case 2:
        return "uint16";
      case 4:
        return "uint32";
      default:
        return "uint64";
    }
  }
}

std::string scalar_text(const Value& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, std::string>) {
          return x;
        } else if constexpr (std::is_same_v<X, Array>) {
          return "[array]";
        } else if constexpr (std::is_same_v<X, bool>) {
          return x ? "true" : "false";
        } else if constexpr (std::is_same_v<X, float>) {
          return float_text(x);
        } else if constexpr (std::is_same_v<X, uint8_t> || std::is_same_v<X, int8_t>) {
          return fmt::format("{}", static_cast<int>(x));
        } else {
          return fmt::format("{}", x);
        }
      },
      v.storage());
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Values

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
      return "uint8";
    case ValueType::INT8:
      return "int8";
    case ValueType::UINT16:
      return "uint16";
    case ValueType::INT16:
      return "int16";
    case ValueType::UINT32:
      return "uint32";
    case ValueType::INT32:
      return "int32";
    case ValueType::FLOAT32:
      return "float32";
    case ValueType::BOOL:
      return "bool";
    case ValueType::STRING:
      return "string";
    case ValueType::ARRAY:
      return "array";
    case ValueType::UINT64:
      return "uint64";
    case ValueType::INT64:
      return "int64";
    case ValueType::FLOAT64:
      return "float64";
  }
  return "unknown";
}

bool Value::is_integer() const {
  switch (type()) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::UINT16:
    case ValueType::INT16:
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::UINT64:
    case ValueType::INT64:
      return true;
    default:
      return false;
  }
}

template <class T>
std::optional<T> Value::to_integer() const {
  static_assert(kIsInteger<T>, "to_integer needs an integer type");
  return std::visit(
      [](const auto& x) -> std::optional<T> {
        using X = std::decay_t<decltype(x)>;
        if constexpr (kIsInteger<X>) {
          if (std::in_range<T>(x)) return static_cast<T>(x);
        }
        return std::nullopt;
      },
      v_);
}

std::optional<double> Value::to_double() const {
  if (const auto* f = std::get_if<float>(&v_)) return static_cast<double>(*f);
  if (const auto* d = std::get_if<double>(&v_)) return *d;
  return std::nullopt;
}

std::optional<bool> Value::to_bool() const {
  if (const auto* b = std::get_if<bool>(&v_)) return *b;
  return std::nullopt;
}

std::string Value::describe() const {
  if (const Array* a = array()) {
    return fmt::format("array of {} ({} items)", value_type_name(a->elem_type), a->items.size());
  }
  return std::string(value_type_name(type()));
}

std::string format_value(const Value& v, size_t max_items) {
  const Array* a = v.array();
  if (a == nullptr) return scalar_text(v);
  std::string out = "[";
  const size_t shown = std::min(max_items, a->items.size());
  for (size_t i = 0; i < shown; ++i) {
    if (i > 0) out += ", ";
    out += format_value(a->items[i], max_items);
  }
  if (shown < a->items.size()) {
    out += fmt::format("{}... ({} items)", shown > 0 ? ", " : "", a->items.size());
  }
  out += "]";
  return out;
}

// ---------------------------------------------------------------------------------------
// Metadata

namespace {

template <class T>
T convert_value(const Value& v, std::string_view source, const std::string& key) {
  auto wrong = [&](std::string_view expected) -> FormatError {
    return FormatError(
        fmt::format("{}: key '{}': expected {}, found {}", source, key, expected, v.describe()));
  };
  if constexpr (std::is_same_v<T, std::string>) {
    if (const std::string* s = v.string()) return *s;
    throw wrong("a string");
  } else if constexpr (std::is_same_v<T, bool>) {
    if (auto b = v.to_bool()) return *b;
    throw wrong("a bool");
  } else if constexpr (std::is_floating_point_v<T>) {
    if (auto d = v.to_double()) return static_cast<T>(*d);
    throw wrong("a float");
  } else {
    static_assert(kIsInteger<T>, "Metadata accessors take integers, floats, bool, std::string");
    if (!v.is_integer()) throw wrong(std::is_signed_v<T> ? "an integer" : "an unsigned integer");
    if (auto x = v.template to_integer<T>()) return *x;
    throw FormatError(fmt::format("{}: key '{}': value {} ({}) does not fit in {}", source, key,
                                  scalar_text(v), value_type_name(v.type()),
                                  integer_type_name<T>()));
  }
}

}  // namespace

const Value* Metadata::value(const std::string& key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

template <class T>
T Metadata::get(const std::string& key) const {
  const Value* v = value(key);
  if (v == nullptr)
    throw FormatError(fmt::format("{}: missing key '{}'", name_or_default(source), key));
  return convert_value<T>(*v, name_or_default(source), key);
}

template <class T>
std::optional<T> Metadata::find(const std::string& key) const {
  const Value* v = value(key);
  if (v == nullptr) return std::nullopt;
  return convert_value<T>(*v, name_or_default(source), key);
}

namespace {

const Array& array_of(const Metadata& m, const std::string& key, std::string_view expected,
                      bool (*elem_ok)(ValueType)) {
  const Value* v = m.value(key);
  const auto src = name_or_default(m.source);
  if (v == nullptr) throw FormatError(fmt::format("{}: missing key '{}'", src, key));
  const Array* a = v->array();
  if (a == nullptr || !elem_ok(a->elem_type)) {
    throw FormatError(
        fmt::format("{}: key '{}': expected {}, found {}", src, key, expected, v->describe()));
  }
  return *a;
}

}  // namespace

std::vector<std::string> Metadata::get_strings(const std::string& key) const {
  const Array& a = array_of(*this, key, "an array of strings",
                            [](ValueType t) { return t == ValueType::STRING; });
  std::vector<std::string> out;
  out.reserve(a.items.size());
  for (const Value& v : a.items) out.push_back(*v.string());
  return out;
}

std::vector<int64_t> Metadata::get_ints(const std::string& key) const {
  const Array& a = array_of(*this, key, "an array of integers", [](ValueType t) {
    return t != ValueType::FLOAT32 && t != ValueType::FLOAT64 && t != ValueType::BOOL &&
           t != ValueType::STRING && t != ValueType::ARRAY;
  });
  std::vector<int64_t> out;
  out.reserve(a.items.size());
  for (size_t i = 0; i < a.items.size(); ++i) {
    auto x = a.items[i].to_integer<int64_t>();
    if (!x) {
      throw FormatError(fmt::format("{}: key '{}': element {} = {} does not fit in int64",
                                    name_or_default(source), key, i, scalar_text(a.items[i])));
    }
    out.push_back(*x);
  }
  return out;
}

std::vector<float> Metadata::get_floats(const std::string& key) const {
  const Array& a = array_of(*this, key, "an array of floats", [](ValueType t) {
    return t == ValueType::FLOAT32 || t == ValueType::FLOAT64;
  });
  std::vector<float> out;
  out.reserve(a.items.size());
  for (const Value& v : a.items) out.push_back(static_cast<float>(*v.to_double()));
  return out;
}

void Metadata::add(std::string key, Value v, const std::string& where) {
  if (values_.count(key) != 0) {
    throw FormatError(
        fmt::format("{}: duplicate key '{}' ({})", name_or_default(source), key, where));
  }
  keys_.push_back(key);
  values_.emplace(std::move(key), std::move(v));
}

#define SPILLWAY_GGUF_INSTANTIATE(T)                     \
  template T Metadata::get<T>(const std::string&) const; \
  template std::optional<T> Metadata::find<T>(const std::string&) const;
#define SPILLWAY_GGUF_INSTANTIATE_INT(T) \
  SPILLWAY_GGUF_INSTANTIATE(T)           \
  template std::optional<T> Value::to_integer<T>() const;

SPILLWAY_GGUF_INSTANTIATE_INT(uint8_t)
SPILLWAY_GGUF_INSTANTIATE_INT(int8_t)
SPILLWAY_GGUF_INSTANTIATE_INT(uint16_t)
SPILLWAY_GGUF_INSTANTIATE_INT(int16_t)
SPILLWAY_GGUF_INSTANTIATE_INT(uint32_t)
SPILLWAY_GGUF_INSTANTIATE_INT(int32_t)
SPILLWAY_GGUF_INSTANTIATE_INT(uint64_t)
SPILLWAY_GGUF_INSTANTIATE_INT(int64_t)
SPILLWAY_GGUF_INSTANTIATE_INT(long long)
SPILLWAY_GGUF_INSTANTIATE_INT(unsigned long long)
SPILLWAY_GGUF_INSTANTIATE(float)
SPILLWAY_GGUF_INSTANTIATE(double)
SPILLWAY_GGUF_INSTANTIATE(bool)
SPILLWAY_GGUF_INSTANTIATE(std::string)

#undef SPILLWAY_GGUF_INSTANTIATE_INT
#undef SPILLWAY_GGUF_INSTANTIATE

// ---------------------------------------------------------------------------------------
// File

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw IoError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw IoError(fmt::format("{}: cannot stat: {}", path, std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(fmt::format("{}: not a regular file", path));
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    void* m = ::mmap(nullptr, static_cast<size_t>(f->size_), PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw IoError(fmt::format("{}: cannot map {} bytes: {}", path, f->size_, std::strerror(e)));
    }
    f->mapping_ = m;
    f->base_ = static_cast<const std::byte*>(m);
  }
  ::close(fd);
  f->parse();
  return f;
}

void GgufFile::release_pages(const void* p, uint64_t n) const {
  if (mapping_ == nullptr || p == nullptr) return;
  const auto lo = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(base_);
  if (lo < base || n > size_ || lo - base > size_ - n) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = (lo + page - 1) / page * page, end = (lo + n) / page * page;
  if (first < end) ::madvise(reinterpret_cast<void*>(first), end - first, MADV_DONTNEED);
}

std::unique_ptr<GgufFile> GgufFile::from_bytes(std::vector<uint8_t> bytes, std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = std::move(name);
  f->owned_ = std::move(bytes);
  f->size_ = f->owned_.size();
  f->base_ = reinterpret_cast<const std::byte*>(f->owned_.data());
  f->parse();
  return f;
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, static_cast<size_t>(size_));
}

const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& GgufFile::tensor(std::string_view name) const {
  const TensorInfo* t = find_tensor(name);
  if (t == nullptr) throw FormatError(fmt::format("{}: missing tensor '{}'", path_, name));
  return *t;
}

void GgufFile::parse() {
  const std::string& file = path_;
  meta_.source = path_;
  Cursor c(base_, size_, file);

  // Header.
  if (size_ < 4) {
    c.fail(
        fmt::format("truncated file: {} bytes, too short for the GGUF magic (a header needs {} "
                    "bytes)",
                    size_, kHeaderBytes));
  }
  const auto* magic = reinterpret_cast<const unsigned char*>(base_);
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    std::string shown;
    for (int i = 0; i < 4; ++i) {
      const unsigned char ch = magic[i];
      shown += (ch >= 0x20 && ch < 0x7f) ? static_cast<char>(ch) : '.';
    }
    c.fail(
        fmt::format("not a GGUF file: magic at byte 0 is '{}' (hex {:02x} {:02x} {:02x} {:02x}), "
                    "expected 'GGUF'",
                    shown, magic[0], magic[1], magic[2], magic[3]));
  }
  c.seek(4);
  c.set_context("header");
  version_ = c.read<uint32_t>("field version");
  if (version_ != 2 && version_ != 3) {
    if (version_ == 0x02000000u || version_ == 0x03000000u) {
      throw UnsupportedError(fmt::format(
          "{}: GGUF version field at byte 4 reads {:#x}: a big-endian file, which this reader "
          "does not support (expected little-endian version 2 or 3)",
          file, version_));
    }
    if (version_ == 1) {
      throw UnsupportedError(fmt::format(
          "{}: GGUF version 1 at byte 4 is not supported (it has 32-bit counts and lengths); "
          "expected version 2 or 3 — convert the file with a current GGUF tool",
          file));
    }
    if (version_ == 0) {
      throw FormatError(
          fmt::format("{}: invalid GGUF version 0 at byte 4, expected version 2 or 3", file));
    }
    throw UnsupportedError(fmt::format(
        "{}: GGUF version {} at byte 4 is not supported, expected version 2 or 3", file, version_));
  }
  const uint64_t tensor_count = c.read<uint64_t>("field tensor_count");
  const uint64_t kv_count = c.read<uint64_t>("field kv_count");
  const uint64_t rest = c.remaining();
  if (kv_count > rest / kMinKvBytes) {
    c.fail(
        fmt::format("kv_count {} at byte 16 is implausible: each key/value needs at least {} "
                    "bytes, only {} bytes follow the header (file size {})",
                    kv_count, kMinKvBytes, rest, size_));
  }
  if (tensor_count > rest / kMinTensorInfoBytes) {
    c.fail(
        fmt::format("tensor_count {} at byte 8 is implausible: each tensor info needs at least "
                    "{} bytes, only {} bytes follow the header (file size {})",
                    tensor_count, kMinTensorInfoBytes, rest, size_));
  }
  if (kv_count * kMinKvBytes + tensor_count * kMinTensorInfoBytes > rest) {
    c.fail(
        fmt::format("kv_count {} and tensor_count {} are implausible: they need at least {} "
                    "bytes, only {} bytes follow the header (file size {})",
                    kv_count, tensor_count,
                    kv_count * kMinKvBytes + tensor_count * kMinTensorInfoBytes, rest, size_));
  }

  // Metadata.
  std::map<std::string, uint64_t, std::less<>> key_at;
  for (uint64_t i = 0; i < kv_count; ++i) {
    const uint64_t at = c.pos();
    c.set_context(fmt::format("metadata entry #{} (at byte {})", i, at));
    std::string key = c.read_string("key");
    if (key.empty()) c.fail("empty key");
    c.set_context(fmt::format("key '{}' (at byte {})", key, at));
    const ValueType t = c.read_value_type("value type");
    Value v = c.read_value(t, 0);
    c.set_context("");
    key_at.emplace(key, at);
    meta_.add(std::move(key), std::move(v), fmt::format("at byte {}", at));
  }

  // Alignment.
  if (const Value* a = meta_.value("general.alignment")) {
    const uint64_t at = key_at.find("general.alignment")->second;
    if (a->type() != ValueType::UINT32) {
      throw FormatError(
          fmt::format("{}: key 'general.alignment' (at byte {}): expected uint32, found {}", file,
                      at, a->describe()));
    }
    const uint32_t al = std::get<uint32_t>(a->storage());
    if (!is_power_of_two(al)) {
      throw FormatError(
          fmt::format("{}: key 'general.alignment' (at byte {}): alignment {} is not a "
                      "nonzero power of two",
                      file, at, al));
    }
    alignment_ = al;
  } else {
    alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  tensors_.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfo t;
    t.info_offset = c.pos();
    c.set_context(fmt::format("tensor info #{} (at byte {})", i, t.info_offset));
    t.name = c.read_string("tensor name");
    if (t.name.empty()) c.fail("empty tensor name");
    c.set_context(fmt::format("tensor '{}' (info at byte {})", t.name, t.info_offset));
    const uint64_t dims_at = c.pos();
    const auto n_dims = c.read<uint32_t>("n_dims");
    if (n_dims < 1 || n_dims > 4) {
      c.fail(fmt::format("n_dims at byte {} is {}, expected 1..4", dims_at, n_dims));
    }
    t.n_dims = static_cast<int>(n_dims);
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne_at = c.pos();
      const auto ne = c.read<uint64_t>("dimension");
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        c.fail(fmt::format("dimension ne[{}] at byte {} is {}, expected 1..{}", d, ne_at, ne,
                           std::numeric_limits<int64_t>::max()));
      }
      const auto ne_s = static_cast<int64_t>(ne);
      if (n_elements > std::numeric_limits<int64_t>::max() / ne_s) {
        c.fail(
            fmt::format("dimensions overflow: the product of ne[0..{}] exceeds int64 (at ne[{}] "
                        "= {}, byte {})",
                        d, d, ne, ne_at));
      }
      n_elements *= ne_s;
      t.ne[d] = ne_s;
    }
    const uint64_t type_at = c.pos();
    const auto type_id = c.read<uint32_t>("type");
    const auto info = dtype_info(type_id);
    if (!info) {
      throw UnsupportedError(
          fmt::format("{}: tensor '{}' (info at byte {}): unknown or unsupported "
                      "tensor type id {} at byte {}",
                      file, t.name, t.info_offset, type_id, type_at));
    }
    t.type = static_cast<DType>(type_id);
    const auto rb = row_bytes(t.type, static_cast<uint64_t>(t.ne[0]));
    if (!rb) {
      if (t.ne[0] % info->block_size != 0) {
        c.fail(fmt::format("ne[0] = {} is not a multiple of the {} block size {}", t.ne[0],
                           info->name, info->block_size));
      }
      c.fail(fmt::format("row of {} {} elements overflows the byte count", t.ne[0], info->name));
    }
    const auto n_rows = static_cast<uint64_t>(t.n_rows());
    if (n_rows != 0 && *rb > std::numeric_limits<uint64_t>::max() / n_rows) {
      c.fail(fmt::format("data size overflows: {} rows of {} bytes", n_rows, *rb));
    }
    t.n_bytes = *rb * n_rows;
    const uint64_t off_at = c.pos();
    t.offset = c.read<uint64_t>("offset");
    if (t.offset % alignment_ != 0) {
      c.fail(fmt::format("data offset {} at byte {} is not a multiple of the alignment {}",
                         t.offset, off_at, alignment_));
    }
    if (by_name_.count(t.name) != 0) {
      const TensorInfo& first = tensors_[by_name_.find(t.name)->second];
      c.fail(fmt::format("duplicate tensor name (first defined by the info at byte {})",
                         first.info_offset));
    }
    c.set_context("");
    by_name_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // Data section: header end rounded up to the alignment.
  const uint64_t header_end = c.pos();
  const uint64_t pad = (alignment_ - header_end % alignment_) % alignment_;
  data_offset_ = header_end + pad;  // header_end <= size_, so no overflow for sane alignments
  if (data_offset_ < header_end) c.fail("data section offset overflows");
  const uint64_t available = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  for (TensorInfo& t : tensors_) {
    if (t.offset > available || t.n_bytes > available - t.offset) {
      throw FormatError(fmt::format(
          "{}: tensor '{}' (info at byte {}): data [offset {}, {}+{}) extends past end of file "
          "(data section starts at byte {}, file size {})",
          file, t.name, t.info_offset, t.offset, t.offset, t.n_bytes, data_offset_, size_));
    }
    t.data = base_ + data_offset_ + t.offset;
  }

  // No two tensors may share bytes.
  std::vector<size_t> order(tensors_.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const TensorInfo& prev = tensors_[order[i - 1]];
    const TensorInfo& cur = tensors_[order[i]];
    if (prev.offset + prev.n_bytes > cur.offset) {
      throw FormatError(fmt::format(
          "{}: tensor '{}' (info at byte {}): data [offset {}, {}+{}) overlaps tensor '{}' data "
          "[offset {}, {}+{})",
          file, cur.name, cur.info_offset, cur.offset, cur.offset, cur.n_bytes, prev.name,
          prev.offset, prev.offset, prev.n_bytes));
    }
  }
}

}  // namespace spillway::gguf
