#include "spillway/kv/kv_storage.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstring>

#include "spillway/core/error.h"
#include "spillway/core/quant.h"

namespace spillway::kv {

KvStorage::KvStorage(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, DType type)
    : n_layer_(n_layer),
      n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      type_(type),
      row_bytes_(0),
      n_slots_(static_cast<size_t>(n_layer), 0),
      k_(static_cast<size_t>(n_layer)),
      v_(static_cast<size_t>(n_layer)) {
  if (type != DType::F32 && type != DType::F16 && type != DType::Q8_0)
    throw InvalidArgument(
        fmt::format("KV storage type must be f32, f16 or q8_0, found {}", dtype_name(type)));
  if (type == DType::Q8_0 && head_dim % 32 != 0)
    throw InvalidArgument(fmt::format(
        "KV storage type q8_0 needs a head size that is a multiple of 32, found {}", head_dim));
  if (head_dim < 1) throw InvalidArgument(fmt::format("KV storage: head size {}", head_dim));
  row_bytes_ = static_cast<size_t>(*spillway::row_bytes(type, static_cast<uint64_t>(head_dim)));
}

uint64_t KvStorage::bytes() const {
  uint64_t slots = 0;
  for (int64_t n : n_slots_) slots += static_cast<uint64_t>(n);
  return 2 * slots * static_cast<uint64_t>(n_head_kv_) * row_bytes_;
}

void KvStorage::reserve(int64_t n_slots) {
  for (int64_t l = 0; l < n_layer_; ++l) reserve(l, n_slots);
}

void KvStorage::reserve(int64_t layer, int64_t n_slots) {
  int64_t& have = n_slots_[static_cast<size_t>(layer)];
  if (n_slots <= have) return;
  // Doubling for growing caches; exact for the first allocation.
  const int64_t target = have == 0 ? n_slots : std::max(n_slots, 2 * have);
  const size_t old_head = static_cast<size_t>(have) * row_bytes_;
  const size_t new_head = static_cast<size_t>(target) * row_bytes_;
  for (auto* buffers : {&k_, &v_}) {
    std::vector<std::byte>& buf = (*buffers)[static_cast<size_t>(layer)];
    std::vector<std::byte> grown(new_head * static_cast<size_t>(n_head_kv_));
    for (int64_t h = 0; h < n_head_kv_ && old_head > 0; ++h)
      std::memcpy(grown.data() + h * new_head, buf.data() + h * old_head, old_head);
    buf.swap(grown);
  }
  have = target;
}

void* KvStorage::k(int64_t layer, int64_t kv_head) {
  return k_[static_cast<size_t>(layer)].data() +
         static_cast<size_t>(kv_head * n_slots(layer)) * row_bytes_;
}
void* KvStorage::v(int64_t layer, int64_t kv_head) {
  return v_[static_cast<size_t>(layer)].data() +
         static_cast<size_t>(kv_head * n_slots(layer)) * row_bytes_;
}
const void* KvStorage::k(int64_t layer, int64_t kv_head) const {
  return const_cast<KvStorage*>(this)->k(layer, kv_head);
}
const void* KvStorage::v(int64_t layer, int64_t kv_head) const {
  return const_cast<KvStorage*>(this)->v(layer, kv_head);
}

void KvStorage::copy_slot(int64_t layer, int64_t from, int64_t to) {
  if (from == to) return;
  const size_t row = row_bytes_;
  for (int64_t h = 0; h < n_head_kv_; ++h) {
    std::memcpy(static_cast<std::byte*>(k(layer, h)) + to * row,
                static_cast<const std::byte*>(k(layer, h)) + from * row, row);
    std::memcpy(static_cast<std::byte*>(v(layer, h)) + to * row,
                static_cast<const std::byte*>(v(layer, h)) + from * row, row);
  }
}

void KvStorage::save(ByteWriter& w) const {
  w.put<int64_t>(n_layer_);
  w.put<int64_t>(n_head_kv_);
  w.put<int64_t>(head_dim_);
  w.put<int32_t>(static_cast<int32_t>(type_));
  w.put_vector(n_slots_);
  for (int64_t l = 0; l < n_layer_; ++l) {
    w.put_vector(k_[static_cast<size_t>(l)]);
    w.put_vector(v_[static_cast<size_t>(l)]);
  }
}

void KvStorage::load(ByteReader& r) {
  const auto n_layer = r.get<int64_t>("KV layers");
  const auto n_head_kv = r.get<int64_t>("KV heads");
  const auto head_dim = r.get<int64_t>("KV head dim");
  const auto type = r.get<int32_t>("KV element type");
  if (n_layer != n_layer_ || n_head_kv != n_head_kv_ || head_dim != head_dim_ ||
      type != static_cast<int32_t>(type_))
    r.fail(fmt::format(
        "the KV storage is {} layers x {} KV heads x head dim {} of type {}, this model's is {} x "
        "{} x {} of {}",
        n_layer, n_head_kv, head_dim, type, n_layer_, n_head_kv_, head_dim_,
        static_cast<int32_t>(type_)));
  std::vector<int64_t> slots = r.get_vector_exact<int64_t>("slots per layer", n_slots_.size());
  const size_t per_slot = static_cast<size_t>(n_head_kv_) * row_bytes_;
  // Every layer's keys and values are found and checked before the storage changes; they
  // are then copied into the buffers the storage has (a loaded session keeps its own
  // allocation instead of replacing it with new buffers and freeing the old ones, which
  // the allocator may keep resident).
  std::vector<const std::byte*> k(k_.size()), v(v_.size());
  for (size_t l = 0; l < slots.size(); ++l) {
    // Bounded by the bytes left, so a hostile count cannot ask for more memory than the
    // file holds.
    if (slots[l] < 0 ||
        static_cast<uint64_t>(slots[l]) > r.remaining() / std::max<size_t>(per_slot, 1))
      r.fail(fmt::format("layer {}: {} slots do not fit the {} bytes left", l, slots[l],
                         r.remaining()));
    const size_t bytes = static_cast<size_t>(slots[l]) * per_slot;
    k[l] = r.get_array_in_place<std::byte>(fmt::format("layer {} keys", l), bytes);
    v[l] = r.get_array_in_place<std::byte>(fmt::format("layer {} values", l), bytes);
  }
  for (size_t l = 0; l < slots.size(); ++l) {
    const size_t bytes = static_cast<size_t>(slots[l]) * per_slot;
    k_[l].assign(k[l], k[l] + bytes);
    v_[l].assign(v[l], v[l] + bytes);
  }
  n_slots_ = std::move(slots);
}

void KvStorage::store(int64_t layer, int64_t slot, const float* k_row, const float* v_row) {
  for (int64_t h = 0; h < n_head_kv_; ++h) {
    const float* ks = k_row + h * head_dim_;
    const float* vs = v_row + h * head_dim_;
    if (type_ == DType::F32) {
      std::memcpy(static_cast<float*>(k(layer, h)) + slot * head_dim_, ks, head_dim_ * 4);
      std::memcpy(static_cast<float*>(v(layer, h)) + slot * head_dim_, vs, head_dim_ * 4);
    } else if (type_ == DType::Q8_0) {
      const size_t off = static_cast<size_t>(slot) * row_bytes_;
      quantize_row_ref(DType::Q8_0, ks, static_cast<std::byte*>(k(layer, h)) + off, head_dim_);
      quantize_row_ref(DType::Q8_0, vs, static_cast<std::byte*>(v(layer, h)) + off, head_dim_);
    } else {
      uint16_t* kd = static_cast<uint16_t*>(k(layer, h)) + slot * head_dim_;
      uint16_t* vd = static_cast<uint16_t*>(v(layer, h)) + slot * head_dim_;
      for (int64_t i = 0; i < head_dim_; ++i) {
        kd[i] = f32_to_f16(ks[i]);
        vd[i] = f32_to_f16(vs[i]);
      }
    }
  }
}

}  // namespace spillway::kv
