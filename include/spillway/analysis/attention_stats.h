// Attention statistics of a stream, collected from a session's forward passes: where each
// query head puts its probability (by the key's stream index and by its position in the
// cache), the residual stream's size token by token (massive activations), and the norms
// and directions of cached keys and values. The raw material of the sink analyses
// (analysis/sinks.h).
//
// Attach to a Session (set_observer) before feeding the tokens to record; it records the
// queries of stream indices [first, first + count) and ignores the others (their forward
// passes still run). Attached to a Forward directly (no Session), it learns which stream
// index sits in which slot only from the steps it sees. Policies that replay (recompute) are not
// supported: their stream indices restart with each replay.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "spillway/model/model.h"
#include "spillway/model/observer.h"

namespace spillway::analysis {

struct AttentionStatsOptions {
  int64_t first = 0;                                    // first recorded stream index
  int64_t count = std::numeric_limits<int64_t>::max();  // queries recorded at most
  bool attention = true;  // probabilities (one more pass over the keys per layer)
  // Un-rotated keys kept whole for the first key_tokens stream indices (sink candidates);
  // the other recorded tokens' keys are averaged.
  int64_t key_tokens = 16;
};

class AttentionStats final : public model::AttentionObserver {
 public:
  // Throws InvalidArgument for first < 0 or count < 1.
  AttentionStats(const model::ModelConfig& config, const AttentionStatsOptions& opts = {});

  int64_t n_layer() const { return n_layer_; }
  int64_t n_head() const { return n_head_; }
  int64_t n_head_kv() const { return n_head_kv_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t first() const { return first_; }
  // Queries recorded so far (stream indices first .. first + n_queries() - 1).
  int64_t n_queries() const { return n_queries_; }
  // Keys (stream indices) seen so far: 0 .. n_keys() - 1.
  int64_t n_keys() const { return n_keys_; }

  // Sum over the recorded queries of the probability they put on stream index k, per
  // layer and query head: [k], k < n_keys().
  const std::vector<double>& mass_by_stream(int64_t layer, int64_t head) const;
  // The same by cache position (rank of the key in the query's span, 0 = oldest).
  const std::vector<double>& mass_by_rank(int64_t layer, int64_t head) const;
  // Recorded queries of `layer` whose span reached rank r: [r].
  const std::vector<int64_t>& queries_by_rank(int64_t layer) const;
  // Sum over recorded queries of the probability on the plan's sink ranges
  // (SlotRange::sink), and how many recorded queries had such a range, per layer.
  double sink_range_mass(int64_t layer, int64_t head) const;
  int64_t sink_range_queries(int64_t layer) const;

  // Gu et al.'s sink score: mean over recorded queries i >= k of A[i][k] (queries whose
  // span lacks k count as 0). NaN when no recorded query is at or after k.
  double alpha(int64_t layer, int64_t head, int64_t k) const;

  // Residual stream of recorded token i (i = stream index - first) entering layer
  // `layer` (0 = the embeddings) or leaving the last one (layer = n_layer): L2 norm and
  // max |x|. layer in [0, n_layer].
  double hidden_norm(int64_t layer, int64_t i) const;
  double hidden_max(int64_t layer, int64_t i) const;
  // L2 norms of recorded token i's key and value in `layer`, KV head kvh.
  double key_norm(int64_t layer, int64_t i, int64_t kvh) const;
  double value_norm(int64_t layer, int64_t i, int64_t kvh) const;
  // Un-rotated key of stream index k < key_tokens (recorded), [head_dim]; empty if k was
  // not recorded.
  std::vector<float> key(int64_t layer, int64_t kvh, int64_t k) const;
  // Mean un-rotated key of the recorded tokens from stream index key_tokens on, [head_dim]
  // (empty when there were none).
  std::vector<float> mean_key(int64_t layer, int64_t kvh) const;

  // AttentionObserver
  void on_attach(const kv::Cache& cache) override;
  void on_step(const kv::StepPlan& plan) override;
  bool wants_probs(int64_t layer) override { return opts_.attention && step_records_; }
  void on_attention(const model::AttentionRecord& r) override;
  void on_hidden(int64_t layer, const float* x, int64_t n_tokens, int64_t n_embd) override;

 private:
  size_t lh(int64_t layer, int64_t head) const {
    return static_cast<size_t>(layer * n_head_ + head);
  }
  // Recorded token index of step token t, or -1.
  int64_t recorded(int64_t t) const;

  int64_t n_layer_, n_head_, n_head_kv_, head_dim_;
  AttentionStatsOptions opts_;
  int64_t first_;
  int64_t n_queries_ = 0;
  int64_t n_keys_ = 0;
  bool step_records_ = false;                       // does the current step hold recorded tokens
  std::vector<int64_t> step_stream_;                // [T] stream index of each token of the step
  std::vector<int32_t> group_of_layer_;             // [n_layer]
  std::vector<std::vector<int64_t>> slot_owner_;    // [group][slot] stream index or -1
  std::vector<std::vector<double>> mass_stream_;    // [layer][head] -> [key stream index]
  std::vector<std::vector<double>> mass_rank_;      // [layer][head] -> [rank]
  std::vector<std::vector<int64_t>> rank_queries_;  // [layer] -> [rank]
  std::vector<double> sink_mass_;                   // [layer][head]
  std::vector<int64_t> sink_queries_;               // [layer]
  std::vector<std::vector<float>> hidden_norm_;     // [layer 0..n_layer] -> [token]
  std::vector<std::vector<float>> hidden_max_;      // [layer 0..n_layer] -> [token]
  std::vector<std::vector<float>> key_norm_;        // [layer] -> [token][kvh]
  std::vector<std::vector<float>> value_norm_;      // [layer] -> [token][kvh]
  std::vector<std::vector<float>> keys_;            // [layer] -> [k < key_tokens][kvh][hd]
  std::vector<std::vector<double>> key_sum_;        // [layer] -> [kvh][hd]
  std::vector<int64_t> key_sum_count_;              // [layer]
};

}  // namespace spillway::analysis
