// Sink analyses on top of AttentionStats: the sink score and sink rate of Gu et al. (ICLR
// 2025, "When Attention Sink Emerges"), where the surplus goes, massive activations, the
// sink key's direction, and causal sink dependence per head (ablation: a head's softmax
// without its sink slots).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "spillway/analysis/attention_stats.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"

namespace spillway::analysis {

// alpha_k(l, h) for every layer and head: [n_layer * n_head], row-major by layer.
std::vector<double> sink_scores(const AttentionStats& stats, int64_t k);

// Percentage of (layer, head) pairs whose score exceeds eps (NaN scores count as not).
// Throws InvalidArgument for eps outside (0, 1].
double sink_rate(std::span<const double> scores, double eps);

// Indices of the `n` largest values, largest first (ties: lower index first).
std::vector<int64_t> top_indices(std::span<const double> values, int64_t n);

// Ranks 1..m of the m values that are not NaN (ties get their average rank; a NaN gets
// rank NaN), and Spearman's rank correlation (Pearson's
// correlation of the ranks over the pairs without a NaN; NaN when fewer than two remain,
// either side is constant, or the sizes differ).
std::vector<double> ranks(std::span<const double> values);
double spearman(std::span<const double> a, std::span<const double> b);

// Cosine of the angle between two vectors of the same length (NaN for a zero vector).
double cosine(std::span<const float> a, std::span<const float> b);

// What an ablation does to a head's sinks (model::SinkEdit has the formulas). With p the
// sinks' share of the head's softmax, o_s their mean value and o_w the window's, the intact
// head outputs p o_s + (1 - p) o_w, which is o_w plus two terms: -p o_w, the mass the
// sinks take from the window, and p o_s, the value they add. The ablations take away both
// or one:
enum class SinkAblation {
  kDrop,    // "drop": no sinks, o_w (both terms gone)
  kKeys,    // "keys": the mass kept, the value zeroed: (1 - p) o_w. This is also the
            // sinks' exact per-query logit as a value-less virtual sink.
  kValues,  // "values": the value kept, the mass given back: o_w + p o_s
  kLogit,   // "logit": a value-less virtual sink whose logit is the head's constant
            // mean over the scored queries of the sinks' log-sum-exp (sink_logit_mean):
            // what a frozen nullsink does, with the best-informed freeze
};
inline constexpr SinkAblation kSinkAblations[] = {SinkAblation::kDrop, SinkAblation::kKeys,
                                                  SinkAblation::kValues, SinkAblation::kLogit};
// "drop", "keys", "values", "logit".
const char* sink_ablation_name(SinkAblation a);
// The ablation a name gives; InvalidArgument listing the names for another.
SinkAblation parse_sink_ablation(std::string_view name);

// Causal sink dependence: the stream runs under a sink policy up to score_from, then the
// scored targets (stream indices score_from .. n-1) are predicted once as they are
// (baseline) and once per ablation, each from a copy of the cache at score_from: a head
// (or every head of a layer, or every head) whose sinks are ablated (by default dropped:
// its softmax leaves out the sink slots and renormalizes over its window), all other heads
// unchanged.
struct AblationOptions {
  kv::PolicySpec policy = kv::PolicySpec("sink:4+252");  // must keep sinks (a sink:S+W with S >= 1)
  int64_t score_from = 0;  // first scored target; must leave the window full before it
  int64_t chunk = 64;      // tokens per forward pass
  int threads = 0;
  bool per_layer = true;  // every head of one layer at a time
  bool per_head = true;   // one head at a time
  // Restrict the per-layer / per-head runs to these layers / (layer, head) pairs (empty:
  // all). InvalidArgument for one out of range.
  std::vector<int64_t> layers;
  std::vector<std::pair<int64_t, int64_t>> heads;
  // The ablations, each run as above (every head, per layer, per head); at least one, no
  // repeats.
  std::vector<SinkAblation> modes = {SinkAblation::kDrop};
  // Called after each ablation run with (runs done, runs in all).
  std::function<void(int64_t, int64_t)> progress;
};

// The mean NLL changes of one ablation.
struct AblationDeltas {
  SinkAblation mode = SinkAblation::kDrop;
  double all_heads_delta = 0;       // every head at once
  std::vector<double> layer_delta;  // [n_layer] (empty unless per_layer; NaN: not run)
  std::vector<double> head_delta;   // [n_layer * n_head] (empty unless per_head; NaN: not run)
};

struct AblationResult {
  int64_t n_layer = 0, n_head = 0;
  int64_t scored = 0;                 // targets per run
  double base_nll = 0;                // mean NLL of the scored targets, nothing ablated
  std::vector<float> base_token_nll;  // [scored]
  // The first mode's changes (by default the sinks dropped); every mode's in `modes`.
  double all_heads_delta = 0;
  std::vector<double> layer_delta;
  std::vector<double> head_delta;
  std::vector<AblationDeltas> modes;  // in the order of AblationOptions::modes
  // From the baseline run: mean probability each head puts on the sink slots over the
  // scored queries, [n_layer * n_head]; the mean over those queries of the log-sum-exp of
  // the head's scaled scores on the sink slots (the logit of SinkAblation::kLogit),
  // [n_layer * n_head]; and, per layer, the first sink token's hidden norm entering the
  // layer over the median token's, [n_layer]. NaN for a head without sink slots.
  std::vector<double> sink_mass;
  std::vector<double> sink_logit_mean;
  std::vector<double> sink_hidden_ratio;
  double seconds = 0;
};

// Throws InvalidArgument for a policy without sinks, or a score_from that leaves fewer
// than S + W tokens before the scored range or no target after it.
AblationResult ablate_sinks(const model::Model& model, std::span<const TokenId> tokens,
                            const AblationOptions& opts);

}  // namespace spillway::analysis
