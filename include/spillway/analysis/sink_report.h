// The sink report of one stream: where a model's heads dump their attention surplus, in
// one value that the CLI prints (`spillway sinks`) and Python returns as arrays. Built
// from two recordings (analysis/attention_stats.h): the stream under the given policy,
// and its first 64 tokens under the full cache (Gu et al.'s protocol for the sink rate).
//
// Tables over heads are [n_layer * n_head], row-major by layer; NaN marks a value that
// does not exist (a head that saw no query at or after the key, a layer without sinks).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "spillway/analysis/sinks.h"
#include "spillway/core/thread_pool.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"

namespace spillway::analysis {

struct SinkReportOptions {
  kv::PolicySpec policy = kv::PolicySpec("full");  // the recorded stream's policy
  int64_t tokens = 64;  // stream tokens recorded (the stream must have at least this many)
  double eps = 0.3;     // sink score threshold, in (0, 1]
  int64_t top = 3;      // stream indices and cache positions listed per layer
  int64_t chunk = 64;   // tokens per forward pass
  int threads = 0;      // of the report's own pool when none is given (0: all cores)
};

// One stream index whose sink score alpha_k exceeds eps in some head.
struct DetectedSink {
  int64_t stream_index = 0;
  int64_t heads_over_eps = 0;
};

// Where one layer's attention goes and how its sinks look.
struct SinkLayerReport {
  int64_t layer = 0;
  int64_t local_window = 0;  // the layer's native window (0: global)
  double alpha1_mean = 0;    // mean over heads of the first token's sink score
  // The `top` stream indices / cache positions with the largest share of the layer's
  // attention (mean over heads and queries): (index, share), largest first.
  std::vector<std::pair<int64_t, double>> top_stream, top_rank;
  double hidden_norm_median = 0;      // residual-stream norm entering the layer, median token
  double first_token_norm_ratio = 0;  // token 0's norm over the median (massive activation)
  std::vector<std::pair<int64_t, double>> sink_norm_ratio;  // each detected sink's ratio
  // Value norms, mean over KV heads: token 0's, and the median of the tokens that are
  // not detected sinks.
  double first_token_value_norm = 0;
  double other_value_norm_median = 0;
  // Per KV head: cosine of token 0's un-rotated key with the mean key of the recorded
  // tokens from index 16 on (NaN when either was not recorded).
  std::vector<double> key0_cos_mean_key;
};

struct SinkReport {
  int64_t n_layer = 0, n_head = 0;
  int64_t tokens = 0;        // N: stream tokens recorded
  int64_t first_tokens = 0;  // T = min(64, N): Gu et al.'s full-attention prefix
  double eps = 0;
  double sink_rate_first = 0;        // % of heads with alpha_1 > eps over the first T tokens
  double sink_rate_stream = 0;       // the same over the N tokens under the policy
  std::vector<double> alpha1;        // [n_layer * n_head] alpha_0 (the first token's score)
  std::vector<double> alpha1_first;  // the same over the first T tokens, full cache
  // alpha_k for k = 1 .. min(8, N) - 1: [k - 1][n_layer * n_head].
  std::vector<std::vector<double>> alpha_k;
  // Stream indices k < max(1, N / 2) with alpha_k > eps in some head (later keys are seen
  // by too few queries to tell).
  std::vector<DetectedSink> detected_sinks;
  std::vector<SinkLayerReport> layers;  // [n_layer]
  // Share of each layer's attention (mean over heads and the N queries) by key stream
  // index [n_layer][N] and by cache position [n_layer][positions].
  std::vector<std::vector<double>> mass_by_stream, mass_by_rank;
  // Residual-stream norms entering each layer and after the last: [n_layer + 1][N].
  std::vector<std::vector<double>> hidden_norm;
};

// Records `opts.tokens` tokens of `stream` under the policy (and the first 64 under the
// full cache) and reports them. `pool` may be shared; nullptr makes one of opts.threads.
// Throws InvalidArgument for eps outside (0, 1], tokens < 2 or more than the stream has,
// top or chunk < 1, or a policy that replays its window (recompute:W: its attention is not
// a stream's).
SinkReport sink_report(const model::Model& model, std::span<const TokenId> stream,
                       const SinkReportOptions& opts, ThreadPool* pool = nullptr);

// Spearman's rank correlations of an ablation (analysis/sinks.h): the NLL change without
// the sinks against the sink mass and against the sinks' hidden-norm ratio, and mass
// against that ratio; NaN where a side is missing or constant.
struct SinkCorrelations {
  int64_t pairs = 0;  // entries with both the NLL change and the sink mass
  double delta_vs_mass = 0, delta_vs_hidden = 0, mass_vs_hidden = 0;
};
// Over heads (head_delta; the hidden ratio of each head's layer), and over layers
// (layer_delta; each layer's mean sink mass over its heads). A result without that pass
// gives pairs = 0 and NaNs.
SinkCorrelations head_correlations(const AblationResult& r);
SinkCorrelations layer_correlations(const AblationResult& r);

// Mean over a layer's heads of a [n_layer * n_head] table, NaN entries left out (NaN when
// all are).
double layer_mean(std::span<const double> table, int64_t layer, int64_t n_head);

}  // namespace spillway::analysis
