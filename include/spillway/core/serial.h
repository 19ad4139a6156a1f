// Byte streams for saved state (a session written to disk and read back, session.h):
// little-endian fixed-size values, strings and arrays appended to a buffer, and a reader
// that checks every read against the bytes left. A read past the end, an array longer than
// its stated bound or a size that does not fit throws FormatError naming the data
// (`what`), the byte offset and what was being read: a truncated or damaged file is an
// error, never a read out of bounds.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace spillway {

// FNV-1a, 64 bits: the checksum of a saved state (catches truncation and damage, not
// tampering).
uint64_t fnv1a64(std::string_view data, uint64_t seed = 0xcbf29ce484222325ULL);

class ByteWriter {
 public:
  explicit ByteWriter(std::string& out) : out_(out) {}

  template <class T>
  void put(T v) {
    static_assert(std::is_arithmetic_v<T>, "put() writes numbers; use put_array for the rest");
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out_.append(b, sizeof(T));
  }
  void put_bool(bool v) { put<uint8_t>(v ? 1 : 0); }
  void put_string(std::string_view s) {
    put<uint64_t>(s.size());
    out_.append(s);
  }
  // A count, then the elements' bytes.
  template <class T>
  void put_array(const T* data, size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    put<uint64_t>(n);
    out_.append(reinterpret_cast<const char*>(data), n * sizeof(T));
  }
  template <class T>
  void put_vector(const std::vector<T>& v) {
    put_array(v.data(), v.size());
  }
  size_t size() const { return out_.size(); }

 private:
  std::string& out_;
};

class ByteReader {
 public:
  // `what` names the data in errors ("session state FILE").
  ByteReader(std::string_view data, std::string what) : data_(data), what_(std::move(what)) {}

  template <class T>
  T get(std::string_view field) {
    static_assert(std::is_arithmetic_v<T>);
    T v;
    std::memcpy(&v, take(sizeof(T), field), sizeof(T));
    return v;
  }
  bool get_bool(std::string_view field);
  std::string get_string(std::string_view field, size_t max_size);
  // An array written by put_array/put_vector, of at most max_n elements (FormatError
  // beyond), or of exactly `exact` elements with get_vector_exact.
  template <class T>
  std::vector<T> get_vector(std::string_view field, size_t max_n) {
    static_assert(std::is_trivially_copyable_v<T>);
    const uint64_t n = get<uint64_t>(field);
    if (n > max_n) too_many(field, n, max_n);
    if (n > remaining() / sizeof(T)) truncated(field, n * sizeof(T));
    std::vector<T> v(static_cast<size_t>(n));
    if (n) std::memcpy(v.data(), take(static_cast<size_t>(n) * sizeof(T), field), n * sizeof(T));
    return v;
  }
  template <class T>
  std::vector<T> get_vector_exact(std::string_view field, size_t n) {
    std::vector<T> v = get_vector<T>(field, n);
    if (v.size() != n) wrong_count(field, v.size(), n);
    return v;
  }
  // An array of exactly n elements, as get_vector_exact reads it, left where it lies: its
  // first byte in the data (valid while the data is).
  template <class T>
  const std::byte* get_array_in_place(std::string_view field, size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    const uint64_t count = get<uint64_t>(field);
    if (count != n) wrong_count(field, count, n);
    if (n > remaining() / sizeof(T)) truncated(field, n * sizeof(T));
    return reinterpret_cast<const std::byte*>(take(n * sizeof(T), field));
  }
  // Reads an array of exactly n elements into dst.
  template <class T>
  void get_into(std::string_view field, T* dst, size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    const uint64_t count = get<uint64_t>(field);
    if (count != n) wrong_count(field, count, n);
    if (n) std::memcpy(dst, take(n * sizeof(T), field), n * sizeof(T));
  }

  // Moves past n bytes (FormatError when fewer are left).
  void skip(size_t n, std::string_view field) { take(n, field); }

  size_t offset() const { return pos_; }
  size_t remaining() const { return data_.size() - pos_; }
  const std::string& what() const { return what_; }
  // FormatError "WHAT: at byte OFFSET: MESSAGE".
  [[noreturn]] void fail(std::string_view message) const;

 private:
  const char* take(size_t n, std::string_view field);
  [[noreturn]] void truncated(std::string_view field, uint64_t bytes) const;
  [[noreturn]] void too_many(std::string_view field, uint64_t n, uint64_t max) const;
  [[noreturn]] void wrong_count(std::string_view field, uint64_t n, uint64_t want) const;

  std::string_view data_;
  std::string what_;
  size_t pos_ = 0;
};

}  // namespace spillway
