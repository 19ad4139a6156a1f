// Looking inside a forward pass: attention probabilities, hidden states and the K/V of the
// new tokens, layer by layer, plus a way to edit one head's softmax (sink ablation).
//
// An observer is attached to a Forward (or a Session); with none attached the forward pass
// does no extra work at all. The forward pass calls, in order, for each step:
//   on_step(plan), on_hidden(-1, embeddings), then for each layer l:
//   edit(l) before its attention, on_attention(record) after it, on_hidden(l, x) after
//   the layer's residual update.
// Everything handed over is valid only during the call.
#pragma once

#include <cstdint>
#include <vector>

#include "spillway/kv/cache.h"
#include "spillway/kv/policy.h"

namespace spillway::model {

// What one layer's attention did for the T tokens of a forward step.
struct AttentionRecord {
  int64_t layer = 0;
  const kv::BatchPlan* plan = nullptr;  // the layer's plan: per token its slot and ranges
  int64_t n_tokens = 0;                 // T
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  // When the observer asked (wants_probs): probabilities of token t's query heads over its
  // span (its plan ranges concatenated in plan order), [n_head][span(t)] floats starting at
  // probs + prob_offset[t]; prob_offset has T + 1 entries. Computed in double from the
  // stored keys, before any edit. nullptr otherwise.
  const float* probs = nullptr;
  const int64_t* prob_offset = nullptr;
  // With probs: [T][n_head] each head's log-sum-exp of the scaled scores (no virtual sink).
  const double* lse = nullptr;
  // The new tokens' keys before RoPE (after any key norm) and values,
  // [T][n_head_kv][head_dim].
  const float* k_rows = nullptr;
  const float* v_rows = nullptr;
};

// What an edited head does with the plan's sink ranges (SlotRange::sink). Write p for the
// share of the head's softmax on the sinks, o_s for their probability-weighted mean value
// and o_w for the rest's (the window's): the head's output is p o_s + (1 - p) o_w, and
// each edit keeps a part of that.
enum class SinkEdit : uint8_t {
  kNone = 0,  // untouched
  kDrop,      // the sinks leave the softmax, which renormalizes over the rest: o_w
  kKeys,      // the sinks keep their share, their values count as zero: (1 - p) o_w. The
              // same as a value-less virtual sink with the sinks' exact logit per query.
  kValues,    // the rest keeps the whole softmax and the sinks' value term is added:
              // o_w + p o_s (kKeys and kValues split kDrop's change in two that add up)
  kLogit,     // the sinks replaced by a value-less virtual sink with a constant logit
              // (AttentionEdit::sink_logit): (1 - p') o_w, p' that logit's share
};

// A change to one layer's softmax for a step.
struct AttentionEdit {
  // [n_head] (or empty): what each query head does with its sink ranges. A token whose plan
  // has no sink range, or nothing but sink ranges, is left as it is.
  std::vector<SinkEdit> sinks;
  // [n_head] (or empty): the logits of kLogit heads, on the scale of the scaled scores.
  std::vector<float> sink_logit;
};

class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;

  // Attached to a session whose cache holds what `cache` holds (Session::set_observer
  // calls it; a Forward alone does not).
  virtual void on_attach(const kv::Cache& cache) {}
  // A forward step begins: the plans of all layer groups.
  virtual void on_step(const kv::StepPlan& plan) {}
  // Whether the record of `layer` should carry probabilities (they cost a pass over the keys).
  virtual bool wants_probs(int64_t layer) { return false; }
  virtual void on_attention(const AttentionRecord& record) {}
  // The residual stream after layer `layer` ([T][n_embd]); layer -1: the (scaled) embeddings
  // that enter the first layer.
  virtual void on_hidden(int64_t layer, const float* x, int64_t n_tokens, int64_t n_embd) {}
  // The edit of `layer`'s softmax in this step, or nullptr for none. The pointer must stay
  // valid until the layer's attention is done.
  virtual const AttentionEdit* edit(int64_t layer) { return nullptr; }
};

}  // namespace spillway::model
