// The memory bound of decoding. A decoded token reads every weight and every cached key
// and value it attends to once, so
//
//   tokens/s <= read bandwidth / (weight bytes + KV bytes read per token)
//
// with the read bandwidth of a buffer of that working-set size (core/bandwidth.h; one that
// fits a large L3 reads faster than DRAM). `spillway bench` reports each decode test's
// share of it.
#pragma once

#include <cstdint>

#include "spillway/session/session.h"

namespace spillway {

struct MemoryBound {
  uint64_t weight_bytes = 0;  // weights one decoded token reads (Model::weight_bytes_per_token)
  uint64_t kv_bytes = 0;      // KV it reads (kv::Cache::kv_bytes_read_per_token)

  uint64_t bytes() const { return weight_bytes + kv_bytes; }
  // The tokens/s that `bandwidth` bytes/s allow.
  double tokens_per_s(double bandwidth) const { return bandwidth / static_cast<double>(bytes()); }
  // The share of that bound a measured rate reached.
  double fraction(double measured_tokens_per_s, double bandwidth) const {
    return measured_tokens_per_s / tokens_per_s(bandwidth);
  }
};

// The bound of a token decoded by `session` with `depth` tokens in its stream.
inline MemoryBound decode_bound(const Session& session, int64_t depth) {
  return {session.model().weight_bytes_per_token(), session.cache().kv_bytes_read_per_token(depth)};
}

}  // namespace spillway
