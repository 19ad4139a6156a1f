#include "spillway/kv/virtual_sinks.h"

#include <fmt/core.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/kv/cache.h"

namespace spillway::kv {

namespace {

// Bytes before the strings: magic, version, flags, four sizes, fingerprint.
constexpr uint64_t kFixedHeader = 8 + 4 + 4 + 4 * 4 + 8;
constexpr uint32_t kFlagValues = 1;
// The largest file the reader takes in: the sizes' bound allows far larger tables than any
// model has, so the file's length is bounded on its own before it is read into memory.
constexpr uint64_t kMaxFileBytes = uint64_t{1} << 30;

std::string fingerprint_text(uint64_t f) {
  return fmt::format("{:016x}", f);
}

// "llama 'SmolLM2 135M' (30 layers x 9 heads, 3 KV heads, head size 64, fingerprint ...)".
std::string model_text(std::string_view arch, std::string_view name, int64_t n_layer,
                       int64_t n_head, int64_t n_head_kv, int64_t head_dim, uint64_t fp) {
  return fmt::format("{}{} ({} layers x {} heads, {} KV heads, head size {}{})", arch,
                     name.empty() ? std::string() : fmt::format(" '{}'", name), n_layer, n_head,
                     n_head_kv, head_dim,
                     fp ? ", fingerprint " + fingerprint_text(fp) : std::string());
}

// A bounds-checked reading position in the file's bytes; errors name the file and offset.
class Reader {
 public:
  Reader(const std::string& bytes, const std::string& path) : b_(bytes), path_(path) {}

  [[noreturn]] void fail(const std::string& msg) const {
    throw FormatError(fmt::format("{}: not a virtual sink file of this version: {}", path_, msg));
  }
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return b_.size() - pos_; }
  void need(uint64_t n, std::string_view what) const {
    if (n > remaining())
      fail(fmt::format("truncated: {} at byte {} needs {} bytes, {} remain (file size {})", what,
                       pos_, n, remaining(), b_.size()));
  }
  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(std::string_view what) {
    const uint64_t at = pos_;
    const auto n = read<uint32_t>(what);
    if (n > kMaxVirtualSinkText)
      fail(fmt::format("{} at byte {} is {} bytes long (at most {})", what, at, n,
                       kMaxVirtualSinkText));
    need(n, what);
    std::string s(b_.data() + pos_, n);
    pos_ += n;
    return s;
  }
  void read_floats(std::vector<float>& out, uint64_t n, std::string_view what) {
    need(n * 4, what);
    out.resize(static_cast<size_t>(n));
    std::memcpy(out.data(), b_.data() + pos_, static_cast<size_t>(n * 4));
    pos_ += n * 4;
  }

 private:
  const std::string& b_;
  const std::string& path_;
  uint64_t pos_ = 0;
};

void put_u32(std::string& out, uint32_t v) {
  out.append(reinterpret_cast<const char*>(&v), 4);
}
void put_string(std::string& out, const std::string& s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out += s;
}

}  // namespace

std::string VirtualSinks::fault() const {
  for (auto [what, n] : {std::pair<const char*, int64_t>{"layers", n_layer},
                         {"heads", n_head},
                         {"KV heads", n_head_kv},
                         {"head size", head_dim}}) {
    if (n < 1 || n > kMaxVirtualSinkDim)
      return fmt::format("{} {} outside [1, {}]", what, n, kMaxVirtualSinkDim);
  }
  if (n_head % n_head_kv != 0)
    return fmt::format("{} heads do not share {} KV heads evenly", n_head, n_head_kv);
  for (auto [what, s] : {std::pair<const char*, const std::string*>{"architecture", &architecture},
                         {"model name", &model_name},
                         {"calibration text", &calibration}}) {
    if (s->size() > kMaxVirtualSinkText)
      return fmt::format("the {} is {} bytes long (at most {})", what, s->size(),
                         kMaxVirtualSinkText);
  }
  const auto heads = static_cast<size_t>(n_layer * n_head);
  if (logits.size() != heads)
    return fmt::format("{} logits for {} layers x {} heads", logits.size(), n_layer, n_head);
  if (!values.empty() && values.size() != heads * static_cast<size_t>(head_dim))
    return fmt::format("{} values for {} layers x {} heads x head size {}", values.size(), n_layer,
                       n_head, head_dim);
  // -inf is a head without a sink; NaN and +inf are no logit at all.
  for (size_t i = 0; i < heads; ++i) {
    const float z = logits[i];
    if (std::isnan(z) || z == std::numeric_limits<float>::infinity())
      return fmt::format("the logit of layer {} head {} is {}", i / static_cast<size_t>(n_head),
                         i % static_cast<size_t>(n_head), z);
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      const size_t head = i / static_cast<size_t>(head_dim);
      return fmt::format("value {} of layer {} head {} is {}", i % static_cast<size_t>(head_dim),
                         head / static_cast<size_t>(n_head), head % static_cast<size_t>(n_head),
                         values[i]);
    }
  }
  return "";
}

void save_virtual_sinks(const VirtualSinks& s, const std::string& path) {
  if (const std::string f = s.fault(); !f.empty())
    throw InvalidArgument(fmt::format("virtual sinks for '{}': {}", path, f));
  std::string out(kVirtualSinkMagic, sizeof(kVirtualSinkMagic));
  put_u32(out, kVirtualSinkVersion);
  put_u32(out, s.has_values() ? kFlagValues : 0);
  for (int64_t n : {s.n_layer, s.n_head, s.n_head_kv, s.head_dim})
    put_u32(out, static_cast<uint32_t>(n));
  out.append(reinterpret_cast<const char*>(&s.model_fingerprint), 8);
  put_string(out, s.architecture);
  put_string(out, s.model_name);
  put_string(out, s.calibration);
  out.append(reinterpret_cast<const char*>(s.logits.data()), s.logits.size() * 4);
  out.append(reinterpret_cast<const char*>(s.values.data()), s.values.size() * 4);
  write_file_atomic(path, out);
}

VirtualSinks load_virtual_sinks(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw IoError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  const std::streamoff size = f.tellg();
  if (size < 0) throw IoError(fmt::format("{}: cannot read its size", path));
  if (static_cast<uint64_t>(size) > kMaxFileBytes)
    throw FormatError(fmt::format("{}: {} bytes, more than any virtual sink file ({} at most)",
                                  path, size, kMaxFileBytes));
  std::string bytes(static_cast<size_t>(size), '\0');
  f.seekg(0);
  if (!f.read(bytes.data(), size))
    throw IoError(fmt::format("{}: cannot read {} bytes", path, size));

  Reader r(bytes, path);
  r.need(kFixedHeader, "the header");
  if (std::memcmp(bytes.data(), kVirtualSinkMagic, sizeof(kVirtualSinkMagic)) != 0)
    r.fail(fmt::format("bad magic (expected \"{}\")",
                       std::string_view(kVirtualSinkMagic, sizeof(kVirtualSinkMagic))));
  r.read<uint64_t>("the magic");
  const auto version = r.read<uint32_t>("the version");
  if (version != kVirtualSinkVersion)
    r.fail(fmt::format("version {} (this build reads version {})", version, kVirtualSinkVersion));
  const auto flags = r.read<uint32_t>("the flags");
  if (flags & ~kFlagValues) r.fail(fmt::format("unknown flags 0x{:x}", flags & ~kFlagValues));
  VirtualSinks s;
  int64_t* sizes[4] = {&s.n_layer, &s.n_head, &s.n_head_kv, &s.head_dim};
  const char* names[4] = {"layers", "heads", "KV heads", "head size"};
  for (int i = 0; i < 4; ++i) {
    const auto n = r.read<uint32_t>(names[i]);
    if (n < 1 || n > kMaxVirtualSinkDim)
      r.fail(fmt::format("{} {} outside [1, {}]", names[i], n, kMaxVirtualSinkDim));
    *sizes[i] = n;
  }
  s.model_fingerprint = r.read<uint64_t>("the model fingerprint");
  s.architecture = r.read_string("the architecture");
  s.model_name = r.read_string("the model name");
  s.calibration = r.read_string("the calibration text");
  // Sizes are at most 2^16 each: the products fit in 64 bits.
  const auto heads = static_cast<uint64_t>(s.n_layer * s.n_head);
  const uint64_t floats = heads + ((flags & kFlagValues) ? heads * s.head_dim : 0);
  if (r.remaining() != floats * 4)
    r.fail(fmt::format(
        "{} bytes after the header at byte {}, but {} layers x {} heads{} need {} ({})",
        r.remaining(), r.pos(), s.n_layer, s.n_head,
        (flags & kFlagValues) ? fmt::format(" with values of size {}", s.head_dim) : "", floats * 4,
        r.remaining() < floats * 4 ? "truncated" : "extra bytes at the end"));
  r.read_floats(s.logits, heads, "the logits");
  if (flags & kFlagValues) r.read_floats(s.values, heads * s.head_dim, "the values");
  if (const std::string fault = s.fault(); !fault.empty()) r.fail(fault);
  return s;
}

void check_virtual_sinks_model(const VirtualSinks& s, const CacheShape& shape,
                               std::string_view path) {
  const auto n_layer = static_cast<int64_t>(shape.layers.size());
  const bool same = s.n_layer == n_layer && s.n_head_kv == shape.n_head_kv &&
                    s.head_dim == shape.head_dim &&
                    (shape.n_head == 0 || s.n_head == shape.n_head) &&
                    (shape.fingerprint == 0 || s.model_fingerprint == shape.fingerprint);
  if (same) return;
  throw InvalidArgument(
      fmt::format("virtual sinks '{}' were fitted to {}, not to this model: {}", path,
                  model_text(s.architecture, s.model_name, s.n_layer, s.n_head, s.n_head_kv,
                             s.head_dim, s.model_fingerprint),
                  model_text(shape.architecture, "", n_layer, shape.n_head, shape.n_head_kv,
                             shape.head_dim, shape.fingerprint)));
}

}  // namespace spillway::kv
