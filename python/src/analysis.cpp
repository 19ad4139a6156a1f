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
          nb::rv_policy::automatic);

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
}

}  // namespace spillway::python
