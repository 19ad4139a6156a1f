// Preallocated per-layer K/V storage. Keys are stored already rotated (RoPE at the
// position the policy chose); values as computed. Element type F32, F16 or Q8_0 (rows of
// head_dim / 32 GGUF Q8_0 blocks: an f16 scale and 32 int8, ggml's rounding; head_dim must
// be a multiple of 32). Each layer has
// its own number of slots (a model's sliding-window layers keep fewer than its global
// ones). Nothing is allocated per token: a layer grows only when a growing policy (full)
// asks for more slots, by doubling.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "spillway/core/serial.h"
#include "spillway/core/types.h"

namespace spillway::kv {

class KvStorage {
 public:
  // No slots until reserve(). Throws InvalidArgument for a type other than F32/F16/Q8_0,
  // and for Q8_0 with a head_dim that is not a multiple of 32.
  KvStorage(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, DType type);

  // Makes room for at least n slots in `layer`, keeping what is stored (doubling growth).
  void reserve(int64_t layer, int64_t n_slots);
  // The same for every layer.
  void reserve(int64_t n_slots);

  int64_t n_slots(int64_t layer) const { return n_slots_[static_cast<size_t>(layer)]; }
  int64_t n_layer() const { return n_layer_; }
  int64_t n_head_kv() const { return n_head_kv_; }
  int64_t head_dim() const { return head_dim_; }
  DType type() const { return type_; }
  // Bytes of one cached row (one KV head's key or value of one token).
  size_t row_bytes() const { return row_bytes_; }
  // Bytes held by the K and V buffers of all layers.
  uint64_t bytes() const;

  // Base of one layer's keys / values for one KV head: [n_slots(layer)] rows of
  // row_bytes(); consecutive heads are n_slots(layer) rows apart (n_slots(layer) * head_dim
  // elements, which for Q8_0 means n_slots(layer) * head_dim / 32 blocks).
  void* k(int64_t layer, int64_t kv_head);
  void* v(int64_t layer, int64_t kv_head);
  const void* k(int64_t layer, int64_t kv_head) const;
  const void* v(int64_t layer, int64_t kv_head) const;

  // Copies the K and V of slot `from` to slot `to` in `layer` (every KV head).
  void copy_slot(int64_t layer, int64_t from, int64_t to);

  // Stores one token's rotated key and value rows ([n_head_kv][head_dim] f32 each) at slot,
  // converted to type() (f16 and Q8_0 with ggml's reference rounding).
  void store(int64_t layer, int64_t slot, const float* k_row, const float* v_row);

  // Saved state: the shape, every layer's slot count and its K/V bytes. load() takes the
  // state of a storage of the same layers, heads, head_dim and type (FormatError
  // otherwise) and replaces this one's slots and contents.
  void save(ByteWriter& w) const;
  void load(ByteReader& r);

 private:
  int64_t n_layer_, n_head_kv_, head_dim_;
  DType type_;
  size_t row_bytes_;                           // bytes of one [head_dim] row of type_
  std::vector<int64_t> n_slots_;               // [n_layer]
  std::vector<std::vector<std::byte>> k_, v_;  // per layer: [n_head_kv][n_slots][head_dim]
};

}  // namespace spillway::kv
