// Fitted virtual sinks (nullsink:W,fit=FILE): per layer and query head a logit and,
// optionally, a value vector, joined to the head's softmax once the first tokens have left
// the window, in place of the real sink tokens. analysis::fit_virtual_sinks makes them
// (`spillway sinks --fit-null FILE`); they are kept in a small binary file of their own
// that names the model they were fitted to, so that a cache of another model refuses them.
//
// The file, little-endian (the byte order of every CPU spillway builds for):
//
//   offset  bytes        field
//   0       8            magic "SPWSINKS"
//   8       4            u32 version (1)
//   12      4            u32 flags: bit 0 set when value vectors follow the logits; the
//                        other bits must be 0
//   16      4 x 4        u32 n_layer, n_head, n_head_kv, head_dim
//   32      8            u64 the model's fingerprint (ModelConfig::fingerprint)
//   40      4 + n        u32 n, then n bytes: general.architecture ("llama")
//           4 + n        the model's general.name (may be empty), for messages
//           4 + n        how the sinks were fitted, in words (policy, text, tokens)
//           4 L H        f32 logits [n_layer][n_head]; -inf: no sink for that head
//           4 L H D      f32 values [n_layer][n_head][head_dim] (flag bit 0 only)
//
// and nothing after. Strings are at most kMaxVirtualSinkText bytes, the four sizes in
// [1, kMaxVirtualSinkDim]; a logit is finite or -inf, a value finite.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace spillway::kv {

struct CacheShape;

inline constexpr char kVirtualSinkMagic[8] = {'S', 'P', 'W', 'S', 'I', 'N', 'K', 'S'};
inline constexpr uint32_t kVirtualSinkVersion = 1;
inline constexpr uint32_t kMaxVirtualSinkText = 4096;
inline constexpr uint32_t kMaxVirtualSinkDim = 1 << 16;

struct VirtualSinks {
  // The model they were fitted to.
  std::string architecture;
  std::string model_name;
  int64_t n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  uint64_t model_fingerprint = 0;
  std::string calibration;  // how they were fitted, in words

  std::vector<float> logits;  // [n_layer][n_head]; -inf: no sink for that head
  std::vector<float> values;  // [n_layer][n_head][head_dim], or empty: value-less sinks

  bool has_values() const { return !values.empty(); }
  // Layer l's rows: logits [n_head], values [n_head][head_dim] (nullptr when value-less).
  const float* layer_logits(int64_t l) const { return logits.data() + l * n_head; }
  const float* layer_values(int64_t l) const {
    return values.empty() ? nullptr : values.data() + l * n_head * head_dim;
  }
  // The reason these sinks cannot be used or stored (sizes that disagree with each other,
  // a NaN or infinite value, a logit of NaN or +inf, a string too long), "" when there is
  // none.
  std::string fault() const;
};

// Writes `sinks` to `path` in the format above. InvalidArgument for sinks with a fault(),
// IoError when the file cannot be written.
void save_virtual_sinks(const VirtualSinks& sinks, const std::string& path);

// Reads and checks a file written by save_virtual_sinks: IoError when it cannot be read,
// FormatError naming the file and what is wrong (too short or truncated, another magic or
// version, unknown flags, sizes out of range or that disagree with the file's length, a
// NaN or infinite number, naming its layer and head). Never reads past the file or
// allocates for sizes the file does not hold.
VirtualSinks load_virtual_sinks(const std::string& path);

// InvalidArgument naming `path` and both models unless the sinks were fitted to the model
// a cache of `shape` is for: the same layers, heads, KV heads and head size, and the same
// fingerprint when the shape has one (a shape built by hand, fingerprint 0, is checked by
// its sizes alone).
void check_virtual_sinks_model(const VirtualSinks& sinks, const CacheShape& shape,
                               std::string_view path);

}  // namespace spillway::kv
