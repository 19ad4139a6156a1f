// Scaled dot-product attention of one query token over runs of cached keys, grouped-query
// style (n_head query heads share n_head_kv key/value heads). Knows nothing of policies:
// the caller says which key runs to score and with which (already rotated) query.
#pragma once

#include <cstdint>

#include "spillway/core/types.h"

namespace spillway::ops {

// Key rows [begin, end) of the cache, scored against `q` ([n_head][head_dim], rotated).
struct KeyRun {
  int32_t begin = 0;
  int32_t end = 0;
  const float* q = nullptr;
};

struct AttentionShape {
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t head_stride = 0;  // elements between consecutive KV heads (n_slots * head_dim)
  DType kv_type = DType::F32;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
};

// Attention of every query head of KV head `kv_head` (the n_head / n_head_kv heads that
// share each key and value row, loaded once for all of them): for query head h of the
// group, out[h][head_dim] = softmax_j(scale * q_h . K[j]) V[j] over all runs, written at
// out + h * head_dim (out is [n_head][head_dim]). k, v: base of the cache for the layer
// ([n_head_kv][n_slots][head_dim]). scratch holds group * total run length floats.
// probs_out, if not null, gets [group][total run length].
void attend_group(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  const void* k, const void* v, float* out, float* scratch,
                  float* probs_out = nullptr);

// Reference for one query head (plain loops, double accumulation) for tests.
void attend_head_ref(const AttentionShape& s, int64_t head, const KeyRun* runs, int n_runs,
                     const void* k, const void* v, float* out);

}  // namespace spillway::ops
