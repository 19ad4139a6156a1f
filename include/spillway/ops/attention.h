// Scaled dot-product attention of one query token over runs of cached keys, grouped-query
// style (n_head query heads share n_head_kv key/value heads). Knows nothing of policies:
// the caller says which key runs to score and with which (already rotated) query.
//
// The keys of a token (its runs, concatenated) are processed in pieces of kAttnPiece
// positions. A piece yields a partial result per head (the piece's max score, the sum of
// exp(score - max) and the exp-weighted sum of values) and the partials of all pieces are
// merged in order. The split depends only on the token's key count, so the work of one
// token can be spread over threads piece by piece (decode) or done by one thread (prefill)
// with bit-identical results.
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
  // F32, F16 or Q8_0. A Q8_0 cache is a sequence of GGUF Q8_0 blocks (32 elements each):
  // head_dim and head_stride must be multiples of 32; element e of a row is in block e / 32.
  DType kv_type = DType::F32;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
};

// Key positions per piece.
inline constexpr int64_t kAttnPiece = 128;

// Pieces for `span` keys (at least one).
inline int64_t attention_pieces(int64_t span) {
  return span <= kAttnPiece ? 1 : (span + kAttnPiece - 1) / kAttnPiece;
}

// Floats of one piece's partial result for one KV head's group of G = n_head / n_head_kv
// heads: [G] max, [G] sum, [G][head_dim] weighted values.
inline int64_t attention_part_floats(const AttentionShape& s) {
  return s.n_head / s.n_head_kv * (s.head_dim + 2);
}

// Partial attention of the G query heads of KV head `kv_head` over key positions
// [n0, n1) of the runs' concatenation (n1 - n0 <= kAttnPiece), into `part`
// (attention_part_floats). k, v: base of the cache for the layer
// ([n_head_kv][n_slots][head_dim], kv_type elements). Throws InvalidArgument for a bad key
// range or KV type (see AttentionShape::kv_type).
void attend_piece(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  int64_t n0, int64_t n1, const void* k, const void* v, float* part);

// Merges the partials of n_pieces consecutive pieces (parts: [n_pieces][part floats]) into
// out[h][head_dim] for the group's heads h = kv_head * G .. kv_head * G + G - 1 (out is
// [n_head][head_dim]). sink_logit, if not null ([n_head], -inf for none), adds a virtual
// sink to each head's softmax: a logit with no value (it takes its share of the
// probability and gives nothing back; gpt-oss's learned sinks do the same).
void attend_merge(const AttentionShape& s, int64_t kv_head, const float* parts, int64_t n_pieces,
                  float* out, const float* sink_logit = nullptr);

// The whole group in one call: every piece into `scratch` (attention_pieces(total run
// length) * attention_part_floats(s) floats), then merged into out (with sink_logit as in
// attend_merge). probs_out, if not null, gets the attention probabilities [G][total run
// length] (computed separately, in double, without any virtual sink).
void attend_group(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  const void* k, const void* v, float* out, float* scratch,
                  float* probs_out = nullptr, const float* sink_logit = nullptr);

// Attention probabilities of the group's heads over all runs ([G][total run length]):
// softmax of the scaled scores, computed in double. lse, if not null, gets each head's
// log-sum-exp of the scaled scores ([G]).
void attention_probs(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                     const void* k, float* probs, double* lse = nullptr);

// Reference for one query head (plain loops, double accumulation) for tests.
void attend_head_ref(const AttentionShape& s, int64_t head, const KeyRun* runs, int n_runs,
                     const void* k, const void* v, float* out);

}  // namespace spillway::ops
