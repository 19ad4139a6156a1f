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
// probability and gives nothing back; gpt-oss's learned sinks do the same). sink_value,
// if not null as well ([n_head][head_dim], f32), gives the sink a value: each head with a
// sink adds its row weighted by the sink's probability, as a cached key's value would be.
// The merge is the same code for every kernel family (the families differ only in their
// pieces), so the sink's value and logit are too; without sink_value the result has the
// bits of a value-less sink.
void attend_merge(const AttentionShape& s, int64_t kv_head, const float* parts, int64_t n_pieces,
                  float* out, const float* sink_logit = nullptr, const float* sink_value = nullptr);

// The whole group in one call: every piece into `scratch` (attention_pieces(total run
// length) * attention_part_floats(s) floats), then merged into out (with sink_logit and
// sink_value as in attend_merge). probs_out, if not null, gets the attention probabilities
// [G][total run length] (computed separately, in double, without any virtual sink).
void attend_group(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  const void* k, const void* v, float* out, float* scratch,
                  float* probs_out = nullptr, const float* sink_logit = nullptr,
                  const float* sink_value = nullptr);

// What attend_split makes of a head whose keys are in two parts, the window and the sinks.
// With p the sinks' share of the head's softmax over both, o_s the sinks' probability-
// weighted mean value and o_w the window's, attention proper gives p o_s + (1 - p) o_w;
// the analyses of the sink (analysis/sinks.h) keep a part of it:
enum class SinkSplit : uint8_t {
  kNone,    // the head is left alone (its row of out is not written)
  kKeys,    // (1 - p) o_w: the sinks' share kept, their values zero
  kValues,  // o_w + p o_s: the window's softmax alone, plus the sinks' value term
  kLogit,   // (1 - p') o_w: the sinks replaced by a value-less sink of a given logit, p' its
            // share against the window
};

// The G heads of KV head kv_head over keys in two parts, window runs and sink runs (at
// least one key each), recombined per head as modes[h] says (modes and logits, the kLogit
// heads' logits on the scale of the scaled scores: [n_head]) into out's rows, as
// attend_merge writes them. scratch: (attention_pieces(window keys) +
// attention_pieces(sink keys)) * attention_part_floats(s) floats. The parts are the
// kernel's pieces; they are combined in double.
void attend_split(const AttentionShape& s, int64_t kv_head, const KeyRun* window, int n_window,
                  const KeyRun* sinks, int n_sinks, const void* k, const void* v,
                  const SinkSplit* modes, const float* logits, float* out, float* scratch);

// Attention probabilities of the group's heads over all runs ([G][total run length]):
// softmax of the scaled scores, computed in double. lse, if not null, gets each head's
// log-sum-exp of the scaled scores ([G]).
void attention_probs(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                     const void* k, float* probs, double* lse = nullptr);

// Reference for one query head (plain loops, double accumulation) for tests.
void attend_head_ref(const AttentionShape& s, int64_t head, const KeyRun* runs, int n_runs,
                     const void* k, const void* v, float* out);

}  // namespace spillway::ops
