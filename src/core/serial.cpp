#include "spillway/core/serial.h"

#include <fmt/core.h>

#include "spillway/core/error.h"

namespace spillway {

uint64_t fnv1a64(std::string_view data, uint64_t seed) {
  uint64_t h = seed;
  for (const char c : data) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

void ByteReader::fail(std::string_view message) const {
  throw FormatError(fmt::format("{}: at byte {}: {}", what_, pos_, message));
}

const char* ByteReader::take(size_t n, std::string_view field) {
  if (n > remaining()) truncated(field, n);
  const char* p = data_.data() + pos_;
  pos_ += n;
  return p;
}

bool ByteReader::get_bool(std::string_view field) {
  const auto v = get<uint8_t>(field);
  if (v > 1) fail(fmt::format("{} is {}, not 0 or 1", field, v));
  return v == 1;
}

std::string ByteReader::get_string(std::string_view field, size_t max_size) {
  const uint64_t n = get<uint64_t>(field);
  if (n > max_size) too_many(field, n, max_size);
  return std::string(take(static_cast<size_t>(n), field), static_cast<size_t>(n));
}

void ByteReader::truncated(std::string_view field, uint64_t bytes) const {
  fail(fmt::format("truncated: {} needs {} byte(s), {} left", field, bytes, remaining()));
}

void ByteReader::too_many(std::string_view field, uint64_t n, uint64_t max) const {
  fail(fmt::format("{} holds {} element(s), at most {} expected", field, n, max));
}

void ByteReader::wrong_count(std::string_view field, uint64_t n, uint64_t want) const {
  fail(fmt::format("{} holds {} element(s), {} expected", field, n, want));
}

}  // namespace spillway
