// A naive reference decoder for tests, written with Eigen so that it reads like the
// equations: the same weights (found by their GGUF names, Model::find_matrix) and, by
// default, the library's matrix products, but everything else in double and written out
// from the definitions: attention from the policy table of docs/architecture.md (each
// step takes the token's span of stream indices per layer, gives them positions, rank in
// the span or the stream index, and rotates every cached un-rotated key at its position),
// RoPE frequencies from the file's metadata, norms, gates and the output head. Llama and
// Gemma 3 (QK-norm, post-norms, GELU, NeoX RoPE with per-layer bases, local layers with
// their own window), chosen by general.architecture.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/kv/virtual_sinks.h"
#include "spillway/model/model.h"
#include "spillway/ops/matmul.h"

#include <Eigen/Dense>

namespace spillway::test {

class NaiveReference {
 public:
  // The span of a policy-governed layer: sinks 0..S-1 plus the last `window` tokens
  // (window < 0: every token). Local layers keep their native window unless
  // local_native is false. Positions: ranks in the span, or stream indices (absolute).
  NaiveReference(const model::Model& m, int64_t sinks, int64_t window, bool absolute,
                 bool local_native = true);

  // Logits [n_vocab] after feeding `token` at the next stream index.
  std::vector<float> step(TokenId token);

  // Matrix products in double from the dequantized weights, without the library's 8-bit
  // activation rounding (slow: a reference for measuring rounding noise).
  void set_exact_products(bool on) { exact_ = on; }

  // Spans given from outside (e.g. what a score-based policy decided): the stream indices
  // layer `layer` attends to at token n, in any order. Replaces the sinks/window rule for
  // the layers the policy governs.
  using SpanFn = std::function<std::vector<int64_t>(int64_t n, int64_t layer)>;
  void set_span_fn(SpanFn fn) { span_fn_ = std::move(fn); }

  // nullsink:W,calib=first:S done the plain way: while S <= n < W each head's log-sum-exp of
  // its scores on tokens 0..S-1 is averaged; from n >= W that average joins the head's
  // softmax as a logit without a value (the span must then be the window).
  void set_null_sink(int64_t calib_tokens) { null_calib_ = calib_tokens; }

  // nullsink:W,fit=FILE done the plain way: from n >= W each head of a layer the policy
  // governs joins the table's logit to its softmax and adds its value (if any) weighted by
  // the sink's probability. Not owned.
  void set_fitted_sinks(const kv::VirtualSinks* sinks) { fitted_ = sinks; }

  // From the next step on, head `head` of `layer` leaves the sink tokens (0..S-1) out of
  // its softmax once they are no longer part of the window (a head's sink logits at -inf).
  void drop_sinks(int64_t layer, int64_t head) { dropped_.insert({layer, head}); }

  // The last step's attention probabilities of (layer, head) by key stream index.
  const std::map<int64_t, double>& last_probs(int64_t layer, int64_t head) const {
    return probs_.at({layer, head});
  }

 private:
  struct Rope {
    bool halves = false;
    int64_t n_rot = 0;
    std::vector<double> inv_freq;
  };
  // What the architecture's equations need beyond ModelConfig, read from the metadata.
  struct Arch {
    bool gemma = false;          // else llama
    double embd_scale = 1.0;     // the embedding row's factor (gemma: sqrt(n_embd))
    double attn_scale = 0.0;     // multiplies q.k
    double logit_softcap = 0.0;  // > 0: z -> c tanh(z / c)
    Rope rope_global, rope_local;
  };
  static Arch read_arch(const model::Model& m);
  const Rope& rope_of(int64_t layer) const;
  std::vector<int64_t> span(int64_t n, int64_t layer) const;
  Eigen::VectorXd rotate(const float* x, int64_t hd, const Rope& r, int64_t pos) const;
  // W x for the bound matrix named `name` (library products, or exact ones in double).
  Eigen::VectorXf mm(const std::string& name, const Eigen::VectorXf& x);
  // Attention of layer l for the new token n: q [n_head*hd] (un-rotated) -> [n_head*hd].
  Eigen::VectorXf attend(int64_t l, int64_t n, const Eigen::VectorXf& q);

  const model::Model& m_;
  Arch arch_;
  int64_t sinks_, window_;
  bool absolute_, local_native_;
  bool exact_ = false;
  ThreadPool pool_;
  int64_t n_ = 0;
  std::vector<std::map<int64_t, Eigen::VectorXf>> k_, v_;  // [layer][stream index] -> row
  SpanFn span_fn_;
  int64_t null_calib_ = 0;
  const kv::VirtualSinks* fitted_ = nullptr;
  std::map<std::pair<int64_t, int64_t>, std::pair<double, int64_t>> null_lse_;  // sum, count
  std::set<std::pair<int64_t, int64_t>> dropped_;  // (layer, head) without sinks
  std::map<std::pair<int64_t, int64_t>, std::map<int64_t, double>> probs_;  // last step
};

}  // namespace spillway::test
