// Attention statistics and sink analyses (analysis/attention_stats.h, analysis/sinks.h) as
// numpy arrays.
#include <fmt/core.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"
#include "spillway/analysis/attention_stats.h"
#include "spillway/analysis/recall.h"
#include "spillway/analysis/sink_report.h"
#include "spillway/analysis/sinks.h"
#include "spillway/core/error.h"
#include "spillway/session/session.h"

namespace spillway::python {

using namespace nb::literals;
using analysis::AttentionStats;

namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// [n_layer][n_head][K] from per-(layer, head) vectors of differing lengths (zero-padded).
template <class T, class Get>
nb::ndarray<nb::numpy, T> stack_lh(const AttentionStats& s, Get get) {
  size_t K = 0;
  for (int64_t l = 0; l < s.n_layer(); ++l)
    for (int64_t h = 0; h < s.n_head(); ++h) K = std::max(K, get(l, h).size());
  std::vector<T> out(sz(s.n_layer() * s.n_head()) * K, T{});
  for (int64_t l = 0; l < s.n_layer(); ++l)
    for (int64_t h = 0; h < s.n_head(); ++h) {
      const auto& v = get(l, h);
      std::copy(v.begin(), v.end(),
                out.begin() + static_cast<ptrdiff_t>(sz(l * s.n_head() + h) * K));
    }
  return to_numpy(std::move(out), {sz(s.n_layer()), sz(s.n_head()), K});
}

// [n_layer][n_queries][n_head_kv] from a per-(layer, token, kv head) accessor.
template <class Get>
nb::ndarray<nb::numpy, double> per_token_kv(const AttentionStats& s, Get get) {
  const int64_t L = s.n_layer(), T = s.n_queries(), K = s.n_head_kv();
  std::vector<double> out(sz(L * T * K));
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < T; ++i)
      for (int64_t k = 0; k < K; ++k) out[sz((l * T + i) * K + k)] = get(l, i, k);
  return to_numpy(std::move(out), {sz(L), sz(T), sz(K)});
}

void check_layer(const AttentionStats& s, int64_t layer, int64_t kvh) {
  if (layer < 0 || layer >= s.n_layer())
    throw InvalidArgument(fmt::format("layer {} outside [0, {})", layer, s.n_layer()));
  if (kvh < 0 || kvh >= s.n_head_kv())
    throw InvalidArgument(fmt::format("KV head {} outside [0, {})", kvh, s.n_head_kv()));
}

nb::ndarray<nb::numpy, double> table(std::vector<double> v, int64_t rows, int64_t cols) {
  return to_numpy(std::move(v), {sz(rows), sz(cols)});
}

// [rows][max row length] from rows of differing lengths (zero-padded).
nb::ndarray<nb::numpy, double> ragged(const std::vector<std::vector<double>>& rows) {
  size_t cols = 0;
  for (const auto& r : rows) cols = std::max(cols, r.size());
  std::vector<double> out(rows.size() * cols, 0.0);
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy(rows[i].begin(), rows[i].end(), out.begin() + static_cast<ptrdiff_t>(i * cols));
  return to_numpy(std::move(out), {rows.size(), cols});
}

// One field of every layer's report, as a [n_layer] array.
template <class Get>
nb::ndarray<nb::numpy, double> per_layer(const analysis::SinkReport& r, Get get) {
  std::vector<double> v;
  for (const auto& l : r.layers) v.push_back(static_cast<double>(get(l)));
  const size_t n = v.size();
  return to_numpy(std::move(v), {n});
}

nb::dict correlations_dict(const analysis::SinkCorrelations& c) {
  nb::dict d;
  d["pairs"] = c.pairs;
  d["delta_vs_mass"] = c.delta_vs_mass;
  d["delta_vs_hidden"] = c.delta_vs_hidden;
  d["mass_vs_hidden"] = c.mass_vs_hidden;
  return d;
}

}  // namespace

void bind_analysis(nb::module_& m) {
  nb::class_<model::AttentionObserver>(m, "AttentionObserver",
                                       "Base of what Session.set_observer accepts.");

  nb::class_<AttentionStats, model::AttentionObserver>(
      m, "AttentionStats",
      R"(Attention statistics of a stream (analysis/attention_stats.h): where each query head
puts its probability by key stream index and by cache rank, residual-stream norms
(massive activations), key/value norms, and un-rotated keys of the first tokens.

AttentionStats(model, first=0, count=None, attention=True, key_tokens=16), then
Session.set_observer(stats) before feeding; or spillway.attention_stats(...) in one call.
Records the queries of stream indices [first, first+count). Not for replaying policies
(recompute).)")
      .def(
          "__init__",
          [](AttentionStats* self, const PyModel& m, int64_t first, std::optional<int64_t> count,
             bool attention, int64_t key_tokens) {
            analysis::AttentionStatsOptions o;
            o.first = first;
            o.count = count.value_or(std::numeric_limits<int64_t>::max());
            o.attention = attention;
            o.key_tokens = key_tokens;
            new (self) AttentionStats(m.model->config(), o);
          },
          "model"_a, "first"_a = 0, "count"_a = nb::none(), "attention"_a = true,
          "key_tokens"_a = 16)
      .def_prop_ro("n_layer", &AttentionStats::n_layer)
      .def_prop_ro("n_head", &AttentionStats::n_head)
      .def_prop_ro("n_head_kv", &AttentionStats::n_head_kv)
      .def_prop_ro("head_dim", &AttentionStats::head_dim)
      .def_prop_ro("first", &AttentionStats::first)
      .def_prop_ro("n_queries", &AttentionStats::n_queries, "Queries recorded so far.")
      .def_prop_ro("n_keys", &AttentionStats::n_keys, "Keys (stream indices) seen so far.")
      .def(
          "mass_by_stream",
          [](const AttentionStats& s) {
            return stack_lh<double>(s, [&](int64_t l, int64_t h) -> const std::vector<double>& {
              return s.mass_by_stream(l, h);
            });
          },
          "[n_layer, n_head, n_keys] float64: summed over the recorded queries, the "
          "probability each head put on key stream index k.")
      .def(
          "mass_by_rank",
          [](const AttentionStats& s) {
            return stack_lh<double>(s, [&](int64_t l, int64_t h) -> const std::vector<double>& {
              return s.mass_by_rank(l, h);
            });
          },
          "[n_layer, n_head, max_rank] float64: the same by rank of the key in the query's "
          "span (0 = oldest); zero past a layer's longest span.")
      .def(
          "queries_by_rank",
          [](const AttentionStats& s) {
            size_t R = 0;
            for (int64_t l = 0; l < s.n_layer(); ++l) R = std::max(R, s.queries_by_rank(l).size());
            std::vector<int64_t> out(sz(s.n_layer()) * R, 0);
            for (int64_t l = 0; l < s.n_layer(); ++l) {
              const auto& v = s.queries_by_rank(l);
              std::copy(v.begin(), v.end(), out.begin() + static_cast<ptrdiff_t>(sz(l) * R));
            }
            return to_numpy(std::move(out), {sz(s.n_layer()), R});
          },
          "[n_layer, max_rank] int64: recorded queries whose span reached rank r.")
      .def(
          "sink_range_mass",
          [](const AttentionStats& s) {
            std::vector<double> v;
            for (int64_t l = 0; l < s.n_layer(); ++l)
              for (int64_t h = 0; h < s.n_head(); ++h) v.push_back(s.sink_range_mass(l, h));
            return table(std::move(v), s.n_layer(), s.n_head());
          },
          "[n_layer, n_head]: summed probability on the plan's sink ranges.")
      .def(
          "sink_range_queries",
          [](const AttentionStats& s) {
            std::vector<int64_t> v;
            for (int64_t l = 0; l < s.n_layer(); ++l) v.push_back(s.sink_range_queries(l));
            return to_numpy(std::move(v), {sz(s.n_layer())});
          },
          "[n_layer]: recorded queries that had a sink range.")
      .def(
          "sink_scores",
          [](const AttentionStats& s, int64_t k) {
            return table(analysis::sink_scores(s, k), s.n_layer(), s.n_head());
          },
          "k"_a = 0,
          "[n_layer, n_head]: Gu et al.'s sink score alpha_k, the mean over recorded queries "
          "i >= k of A[i][k] (NaN where no recorded query is at or after k).")
      .def(
          "hidden_norm",
          [](const AttentionStats& s) {
            const int64_t L = s.n_layer() + 1, T = s.n_queries();
            std::vector<double> v(sz(L * T));
            for (int64_t l = 0; l < L; ++l)
              for (int64_t i = 0; i < T; ++i) v[sz(l * T + i)] = s.hidden_norm(l, i);
            return table(std::move(v), L, T);
          },
          "[n_layer+1, n_queries]: L2 norm of the residual stream of each recorded token "
          "entering layer l (l = n_layer: leaving the last one).")
      .def(
          "hidden_max",
          [](const AttentionStats& s) {
            const int64_t L = s.n_layer() + 1, T = s.n_queries();
            std::vector<double> v(sz(L * T));
            for (int64_t l = 0; l < L; ++l)
              for (int64_t i = 0; i < T; ++i) v[sz(l * T + i)] = s.hidden_max(l, i);
            return table(std::move(v), L, T);
          },
          "[n_layer+1, n_queries]: max |x| of the same residual streams (massive "
          "activations).")
      .def(
          "key_norm",
          [](const AttentionStats& s) {
            return per_token_kv(
                s, [&](int64_t l, int64_t i, int64_t k) { return s.key_norm(l, i, k); });
          },
          "[n_layer, n_queries, n_head_kv]: L2 norms of the recorded tokens' keys.")
      .def(
          "value_norm",
          [](const AttentionStats& s) {
            return per_token_kv(
                s, [&](int64_t l, int64_t i, int64_t k) { return s.value_norm(l, i, k); });
          },
          "[n_layer, n_queries, n_head_kv]: L2 norms of their values.")
      .def(
          "key",
          [](const AttentionStats& s, int64_t layer, int64_t kvh, int64_t k) {
            check_layer(s, layer, kvh);
            std::vector<float> v = s.key(layer, kvh, k);
            const size_t n = v.size();
            return to_numpy(std::move(v), {n});
          },
          "layer"_a, "kv_head"_a, "k"_a,
          "Un-rotated key of stream index k < key_tokens ([head_dim] float32; empty if k was "
          "not recorded).")
      .def(
          "mean_key",
          [](const AttentionStats& s, int64_t layer, int64_t kvh) {
            check_layer(s, layer, kvh);
            std::vector<float> v = s.mean_key(layer, kvh);
            const size_t n = v.size();
            return to_numpy(std::move(v), {n});
          },
          "layer"_a, "kv_head"_a,
          "Mean un-rotated key of the recorded tokens from stream index key_tokens on.");

  m.def(
      "sink_rate",
      [](nb::handle scores, double eps) {
        nb::object a =
            nb::module_::import_("numpy").attr("ascontiguousarray")(scores, "dtype"_a = "float64");
        auto v = nb::cast<nb::ndarray<const double, nb::c_contig>>(a);
        return analysis::sink_rate({v.data(), v.size()}, eps);
      },
      "scores"_a, "eps"_a = 0.3,
      "Percentage of (layer, head) scores above eps (NaN counts as not), Gu et al.'s sink "
      "rate.");

  nb::class_<analysis::AblationResult>(m, "AblationResult",
                                       "Causal sink dependence per layer and head "
                                       "(spillway.ablate_sinks).")
      .def_ro("n_layer", &analysis::AblationResult::n_layer)
      .def_ro("n_head", &analysis::AblationResult::n_head)
      .def_ro("scored", &analysis::AblationResult::scored, "Targets per run.")
      .def_ro("base_nll", &analysis::AblationResult::base_nll,
              "Mean NLL of the scored targets, nothing ablated.")
      .def_ro("all_heads_delta", &analysis::AblationResult::all_heads_delta,
              "Mean NLL change with every head's sinks dropped.")
      .def_ro("seconds", &analysis::AblationResult::seconds)
      .def_prop_ro(
          "base_token_nll",
          [](const analysis::AblationResult& r) {
            std::vector<float> v = r.base_token_nll;
            const size_t n = v.size();
            return to_numpy(std::move(v), {n});
          },
          nb::rv_policy::automatic)
      .def_prop_ro(
          "layer_delta",
          [](const analysis::AblationResult& r) {
            std::vector<double> v = r.layer_delta;
            const size_t n = v.size();
            return to_numpy(std::move(v), {n});
          },
          nb::rv_policy::automatic,
          "[n_layer] mean NLL change with a layer's sinks dropped (NaN: not run).")
      .def_prop_ro(
          "head_delta",
          [](const analysis::AblationResult& r) {
            return table(r.head_delta, r.head_delta.empty() ? 0 : r.n_layer,
                         r.head_delta.empty() ? 0 : r.n_head);
          },
          nb::rv_policy::automatic, "[n_layer, n_head] the same per head (NaN: not run).")
      .def_prop_ro(
          "sink_mass",
          [](const analysis::AblationResult& r) {
            return table(r.sink_mass, r.sink_mass.empty() ? 0 : r.n_layer,
                         r.sink_mass.empty() ? 0 : r.n_head);
          },
          nb::rv_policy::automatic,
          "[n_layer, n_head] mean probability on the sink slots (baseline run).")
      .def_prop_ro(
          "sink_hidden_ratio",
          [](const analysis::AblationResult& r) {
            std::vector<double> v = r.sink_hidden_ratio;
            const size_t n = v.size();
            return to_numpy(std::move(v), {n});
          },
          nb::rv_policy::automatic)
      .def_prop_ro(
          "spearman_heads",
          [](const analysis::AblationResult& r) {
            return correlations_dict(analysis::head_correlations(r));
          },
          "Spearman rank correlations over heads: {'pairs', 'delta_vs_mass', "
          "'delta_vs_hidden', 'mass_vs_hidden'} (NaN without a per-head pass).")
      .def_prop_ro(
          "spearman_layers",
          [](const analysis::AblationResult& r) {
            return correlations_dict(analysis::layer_correlations(r));
          },
          "The same over layers (each layer's mean sink mass; NaN without a per-layer pass).");

  m.def(
      "ablate_sinks",
      [](const PyModel& m, nb::handle ids, const std::string& policy, int64_t score_from,
         int64_t chunk, int threads, bool per_layer, bool per_head, std::vector<int64_t> layers,
         std::vector<std::pair<int64_t, int64_t>> heads) {
        const auto tokens = token_ids(ids, m.model->config().n_vocab, "ablate_sinks");
        analysis::AblationOptions o;
        o.policy = kv::PolicySpec(policy);
        o.score_from = score_from;
        o.chunk = chunk;
        o.threads = threads;
        o.per_layer = per_layer;
        o.per_head = per_head;
        o.layers = std::move(layers);
        o.heads = std::move(heads);
        nb::gil_scoped_release release;
        return analysis::ablate_sinks(*m.model, tokens, o);
      },
      "model"_a, "ids"_a, "policy"_a = "sink:4+252", "score_from"_a = 0, "chunk"_a = 64,
      "threads"_a = 0, "per_layer"_a = true, "per_head"_a = true,
      "layers"_a = std::vector<int64_t>{}, "heads"_a = std::vector<std::pair<int64_t, int64_t>>{},
      "Causal sink dependence (analysis/sinks.h): the targets from score_from on predicted "
      "once as they are and once per ablation (a head, or every head of a layer, whose "
      "softmax leaves out the sink slots). The GIL is released.");

  using analysis::SinkReport;
  nb::class_<SinkReport>(m, "SinkReport",
                         "Where a model's heads dump their attention surplus over one stream "
                         "(spillway.sink_report; `spillway sinks` prints the same).")
      .def_ro("n_layer", &SinkReport::n_layer)
      .def_ro("n_head", &SinkReport::n_head)
      .def_ro("tokens", &SinkReport::tokens, "Stream tokens recorded (N).")
      .def_ro("first_tokens", &SinkReport::first_tokens,
              "T = min(64, N): the full-attention prefix of Gu et al.'s sink rate.")
      .def_ro("eps", &SinkReport::eps)
      .def_ro("sink_rate_first", &SinkReport::sink_rate_first,
              "% of heads with alpha_1 > eps over the first T tokens, full cache.")
      .def_ro("sink_rate_stream", &SinkReport::sink_rate_stream,
              "% of heads with alpha_1 > eps over the N tokens under the policy.")
      .def_prop_ro(
          "alpha1", [](const SinkReport& r) { return table(r.alpha1, r.n_layer, r.n_head); },
          nb::rv_policy::automatic, "[n_layer, n_head] the first token's sink score.")
      .def_prop_ro(
          "alpha1_first",
          [](const SinkReport& r) { return table(r.alpha1_first, r.n_layer, r.n_head); },
          nb::rv_policy::automatic, "[n_layer, n_head] the same over the first T tokens.")
      .def_prop_ro(
          "alpha_k",
          [](const SinkReport& r) {
            std::vector<double> v;
            for (const auto& a : r.alpha_k) v.insert(v.end(), a.begin(), a.end());
            return to_numpy(std::move(v), {r.alpha_k.size(), sz(r.n_layer), sz(r.n_head)});
          },
          nb::rv_policy::automatic,
          "[K, n_layer, n_head] sink scores of stream indices 1..K (K = min(8, N) - 1).")
      .def_prop_ro(
          "detected_sinks",
          [](const SinkReport& r) {
            std::vector<int64_t> v;
            for (const auto& d : r.detected_sinks) {
              v.push_back(d.stream_index);
              v.push_back(d.heads_over_eps);
            }
            return to_numpy(std::move(v), {r.detected_sinks.size(), size_t{2}});
          },
          nb::rv_policy::automatic,
          "[n, 2] int64: (stream index, heads whose score exceeds eps) of each detected sink.")
      .def_prop_ro(
          "local_window",
          [](const SinkReport& r) {
            return per_layer(r, [](const auto& l) { return l.local_window; });
          },
          nb::rv_policy::automatic, "[n_layer] each layer's native window (0: global).")
      .def_prop_ro(
          "alpha1_mean",
          [](const SinkReport& r) {
            return per_layer(r, [](const auto& l) { return l.alpha1_mean; });
          },
          nb::rv_policy::automatic)
      .def_prop_ro(
          "first_token_norm_ratio",
          [](const SinkReport& r) {
            return per_layer(r, [](const auto& l) { return l.first_token_norm_ratio; });
          },
          nb::rv_policy::automatic,
          "[n_layer] token 0's residual norm over the median token's (massive activation).")
      .def_prop_ro(
          "hidden_norm_median",
          [](const SinkReport& r) {
            return per_layer(r, [](const auto& l) { return l.hidden_norm_median; });
          },
          nb::rv_policy::automatic)
      .def_prop_ro(
          "first_token_value_norm",
          [](const SinkReport& r) {
            return per_layer(r, [](const auto& l) { return l.first_token_value_norm; });
          },
          nb::rv_policy::automatic)
      .def_prop_ro(
          "other_value_norm_median",
          [](const SinkReport& r) {
            return per_layer(r, [](const auto& l) { return l.other_value_norm_median; });
          },
          nb::rv_policy::automatic)
      .def_prop_ro(
          "key0_cos_mean_key",
          [](const SinkReport& r) {
            std::vector<std::vector<double>> rows;
            for (const auto& l : r.layers) rows.push_back(l.key0_cos_mean_key);
            return ragged(rows);
          },
          nb::rv_policy::automatic,
          "[n_layer, n_head_kv] cosine of token 0's key with the mean key (NaN: not "
          "recorded).")
      .def_prop_ro(
          "top_stream",
          [](const SinkReport& r) {
            std::vector<std::vector<std::pair<int64_t, double>>> v;
            for (const auto& l : r.layers) v.push_back(l.top_stream);
            return v;
          },
          "Per layer: (stream index, share of the layer's attention), largest first.")
      .def_prop_ro(
          "top_rank",
          [](const SinkReport& r) {
            std::vector<std::vector<std::pair<int64_t, double>>> v;
            for (const auto& l : r.layers) v.push_back(l.top_rank);
            return v;
          },
          "Per layer: (cache position, share of the layer's attention), largest first.")
      .def_prop_ro(
          "mass_by_stream", [](const SinkReport& r) { return ragged(r.mass_by_stream); },
          nb::rv_policy::automatic,
          "[n_layer, N] share of each layer's attention by key stream index.")
      .def_prop_ro(
          "mass_by_rank", [](const SinkReport& r) { return ragged(r.mass_by_rank); },
          nb::rv_policy::automatic,
          "[n_layer, positions] the same by cache position (zero-padded).")
      .def_prop_ro(
          "hidden_norm", [](const SinkReport& r) { return ragged(r.hidden_norm); },
          nb::rv_policy::automatic,
          "[n_layer + 1, N] residual-stream norms entering each layer and after the last.");

  m.def(
      "sink_report",
      [](const PyModel& m, nb::handle ids, const std::string& policy, int64_t tokens, double eps,
         int64_t top, int64_t chunk, int threads) {
        const auto stream = token_ids(ids, m.model->config().n_vocab, "sink_report");
        analysis::SinkReportOptions o;
        o.policy = kv::PolicySpec(policy);
        o.tokens = tokens;
        o.eps = eps;
        o.top = top;
        o.chunk = chunk;
        o.threads = threads;
        nb::gil_scoped_release release;
        return analysis::sink_report(*m.model, stream, o);
      },
      "model"_a, "ids"_a, "policy"_a = "full", "tokens"_a = 64, "eps"_a = 0.3, "top"_a = 3,
      "chunk"_a = 64, "threads"_a = 0,
      "The sink report of the first `tokens` ids under `policy` (analysis/sink_report.h), as "
      "`spillway sinks` computes it. The GIL is released.");

  m.def(
      "recall",
      [](const PyModel& m, nb::handle filler, nb::handle policies, const std::string& probe,
         std::vector<int64_t> distances, int64_t seeds, int64_t span, int64_t lead, int64_t chunk,
         int threads) {
        const auto kind = analysis::parse_probe_kind(probe);
        if (!kind)
          throw InvalidArgument(
              fmt::format("recall: probe '{}' is not one of copy, passkey, lines", probe));
        const auto ids = token_ids(filler, m.model->config().n_vocab, "recall");
        analysis::RecallOptions o;
        if (nb::isinstance<nb::str>(policies)) {
          o.policies.emplace_back(nb::cast<std::string>(policies));
        } else {
          for (nb::handle p : policies) o.policies.emplace_back(nb::cast<std::string>(p));
        }
        o.kind = *kind;
        o.distances = std::move(distances);
        o.seeds = seeds;
        o.span = span;
        o.lead = lead;
        o.chunk = chunk;
        o.threads = threads;
        std::vector<analysis::RecallRow> rows;
        {
          nb::gil_scoped_release release;
          rows = analysis::measure_recall(*m.model, ids, o);
        }
        nb::list out;
        for (const auto& r : rows) {
          nb::dict d;
          d["spec"] = r.spec;
          d["probe"] = analysis::probe_kind_name(r.kind);
          d["distance"] = r.distance;
          d["n"] = r.n;
          if (r.kind == analysis::ProbeKind::kCopy) {
            d["recall"] = r.recall;
            d["nll_first"] = r.nll_first;
            d["nll_repeat"] = r.nll_repeat;
            d["recall_seeds"] = r.recall_seeds;
          } else {
            d["accuracy"] = r.accuracy;
            d["answers"] = r.answers;
            d["expected"] = r.expected;
          }
          d["kv_slots"] = r.kv_slots;
          d["kv_bytes_peak"] = r.kv_bytes_peak;
          d["capacity"] = r.capacity;
          d["seconds"] = r.seconds;
          out.append(d);
        }
        return out;
      },
      "model"_a, "filler"_a, "policies"_a, "probe"_a = "copy",
      "distances"_a = std::vector<int64_t>{64, 128, 256, 512, 1024, 2048, 4096}, "seeds"_a = 3,
      "span"_a = 32, "lead"_a = 64, "chunk"_a = 128, "threads"_a = 0,
      "What a cache policy remembers (analysis/recall.h): probes streamed through each policy "
      "at each distance, seeds per distance. filler: token ids of real text (model.tokenize). "
      "probe: 'copy' (a random span of `span` tokens seen again after `distance` filler "
      "tokens; recall = 1 - NLL(again)/NLL(first)), 'passkey' or 'lines' (greedy answers; "
      "accuracy). Returns one dict per (policy, distance), as `spillway recall --json` rows. "
      "The GIL is released.");
}

}  // namespace spillway::python
