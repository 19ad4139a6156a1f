// spillway sinks: where the model dumps its attention surplus. Sink scores and the sink
// rate (Gu et al.), which stream indices and cache positions receive the mass, massive
// activations and value norms of the sinks, the sink key's direction, and with --ablate the
// causal dependence of every head on its sink slots, taken apart into the mass the sinks
// absorb and the value they add (--ablate-mode), and with --fit-null the virtual sinks of
// nullsink:W,fit=FILE fitted to the real ones. The analyses are the library's
// (analysis/sink_report.h, analysis/sinks.h, analysis/sink_fit.h); this file builds the
// stream, prints the tables and writes the JSON (and the fit's file).
#include <fmt/core.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/analysis/sink_fit.h"
#include "spillway/analysis/sink_report.h"
#include "spillway/analysis/sinks.h"
#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/kv/policy.h"
#include "spillway/kv/virtual_sinks.h"
#include "spillway/model/model.h"
#include "util.h"

namespace spillway::cli {
namespace {

using nlohmann::ordered_json;

struct SinksOptions {
  std::string model = kDefaultModel;
  std::optional<std::string> file, text;
  std::string policy = "full";
  int64_t tokens = 64;
  int64_t skip = 0;
  std::string prefix;
  int64_t prefix_random = 0;
  uint64_t seed = 1;
  bool no_bos = false;
  double eps = 0.3;
  int64_t top = 3;
  int threads = 0;
  int64_t chunk = 64;
  std::optional<std::string> json_out, plot_dir;
  bool ablate = false;
  int64_t score_tokens = 256;
  bool layers_only = false;
  std::vector<std::string> heads;
  std::vector<int64_t> layers;
  std::vector<std::string> ablate_modes;
  std::optional<std::string> fit_out;
  bool fit_logit_only = false;
  bool quiet = false;
};

// The --fit-null stream's length when --tokens is not given: about 1,800 queries past a
// cache of 260, which the fit's figures in docs/sinks.md found enough.
constexpr int64_t kDefaultFitTokens = 2048;

// --ablate-mode values (repeatable, comma-separated, "all") -> the ablations, in order.
std::vector<analysis::SinkAblation> parse_modes(const std::vector<std::string>& given) {
  std::vector<analysis::SinkAblation> modes;
  const auto add = [&](analysis::SinkAblation a) {
    if (std::find(modes.begin(), modes.end(), a) == modes.end()) modes.push_back(a);
  };
  for (const std::string& g : given) {
    for (size_t pos = 0; pos <= g.size();) {
      const size_t comma = std::min(g.find(',', pos), g.size());
      const std::string name = g.substr(pos, comma - pos);
      if (name == "all") {
        for (analysis::SinkAblation a : analysis::kSinkAblations) add(a);
      } else {
        add(analysis::parse_sink_ablation(name));
      }
      pos = comma + 1;
    }
  }
  if (modes.empty()) modes.push_back(analysis::SinkAblation::kDrop);
  return modes;
}

// What an ablation leaves of a head's output p o_s + (1 - p) o_w.
const char* mode_formula(analysis::SinkAblation a) {
  switch (a) {
    case analysis::SinkAblation::kKeys:
      return "(1 - p) o_w: the mass kept, the value zeroed";
    case analysis::SinkAblation::kValues:
      return "o_w + p o_s: the value kept, the mass given back";
    case analysis::SinkAblation::kLogit:
      return "(1 - p') o_w: a value-less sink of constant logit";
    default:
      return "o_w: no sinks";
  }
}

// "L:H" -> (L, H), checked against the model.
std::pair<int64_t, int64_t> parse_head(const std::string& s, const model::ModelConfig& c) {
  const size_t colon = s.find(':');
  int64_t l = -1, h = -1;
  try {
    if (colon == std::string::npos) throw std::invalid_argument(s);
    size_t a = 0, b = 0;
    l = std::stoll(s.substr(0, colon), &a);
    h = std::stoll(s.substr(colon + 1), &b);
    if (a != colon || b != s.size() - colon - 1) throw std::invalid_argument(s);
  } catch (const std::exception&) {
    throw InvalidArgument(fmt::format("--head '{}': expected LAYER:HEAD, e.g. 3:7", s));
  }
  if (l < 0 || l >= c.n_layer || h < 0 || h >= c.n_head)
    throw InvalidArgument(
        fmt::format("--head {}: the layer must be in [0, {}) and the head in "
                    "[0, {})",
                    s, c.n_layer, c.n_head));
  return {l, h};
}

// The stream: [BOS] + prefix + text tokens (after skipping some), cut to `want` tokens.
std::vector<TokenId> stream_tokens(const model::Model& m, const SinksOptions& o, int64_t want,
                                   const std::string& why, std::string* what) {
  const Tokenizer& tok = m.tokenizer();
  const std::string text = o.file ? read_file(*o.file) : *o.text;
  // About 4 bytes per token of English prose; take what should be plenty.
  const size_t bytes = std::min(text.size(), static_cast<size_t>(want + o.skip) * 16 + 4096);
  EncodeOptions plain;
  plain.add_bos = false;
  std::vector<TokenId> body = tok.encode(std::string_view(text).substr(0, bytes), plain);
  if (o.skip > 0) {
    if (o.skip >= static_cast<int64_t>(body.size()))
      throw InvalidArgument(
          fmt::format("--skip-tokens {} but the text has only {} tokens", o.skip, body.size()));
    body.erase(body.begin(), body.begin() + o.skip);
  }
  std::vector<TokenId> out;
  const bool bos = tok.add_bos() && tok.bos() && !o.no_bos;
  if (bos) out.push_back(*tok.bos());
  if (!o.prefix.empty()) {
    const auto p = tok.encode(o.prefix, plain);
    out.insert(out.end(), p.begin(), p.end());
  }
  if (o.prefix_random > 0) {
    // Ordinary vocabulary tokens, drawn with a fixed seed.
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<TokenId> u(0, tok.vocab_size() - 1);
    for (int64_t i = 0; i < o.prefix_random;) {
      const TokenId t = u(rng);
      if (tok.token_type(t) != TokenType::Normal) continue;
      out.push_back(t);
      ++i;
    }
  }
  const int64_t head = static_cast<int64_t>(out.size());
  out.insert(out.end(), body.begin(), body.end());
  if (static_cast<int64_t>(out.size()) < want)
    throw InvalidArgument(
        fmt::format("the stream has {} tokens; {} are needed ({})", out.size(), want, why));
  out.resize(static_cast<size_t>(want));
  *what =
      fmt::format("{}{}{}{} tokens of {}{}", bos ? "BOS + " : "",
                  o.prefix.empty() ? "" : fmt::format("prefix ({} tokens) + ", head - bos),
                  o.prefix_random > 0 ? fmt::format("{} random tokens + ", o.prefix_random) : "",
                  want - head, o.file ? *o.file : std::string("--text"),
                  o.skip > 0 ? fmt::format(" from token {}", o.skip) : "");
  return out;
}

ordered_json table_json(const std::vector<double>& v, int64_t rows, int64_t cols) {
  ordered_json j = ordered_json::array();
  for (int64_t r = 0; r < rows; ++r) {
    ordered_json row = ordered_json::array();
    for (int64_t c = 0; c < cols; ++c) {
      const double x = v[static_cast<size_t>(r * cols + c)];
      row.push_back(std::isnan(x) ? ordered_json(nullptr) : ordered_json(x));
    }
    j.push_back(row);
  }
  return j;
}

std::string plot_script() {
  if (const char* p = std::getenv("SPILLWAY_PLOT_SINKS_SCRIPT")) return p;
  return std::string(SPILLWAY_SCRIPTS_DIR) + "/plot-sinks.py";
}

ordered_json pairs_json(const std::vector<std::pair<int64_t, double>>& v) {
  ordered_json j = ordered_json::array();
  for (const auto& [k, x] : v) j.push_back({k, x});
  return j;
}

ordered_json number_json(double x) {
  return std::isnan(x) ? ordered_json(nullptr) : ordered_json(x);
}

ordered_json correlations_json(const analysis::SinkCorrelations& c) {
  return {{"delta_vs_mass", number_json(c.delta_vs_mass)},
          {"delta_vs_hidden", number_json(c.delta_vs_hidden)},
          {"mass_vs_hidden", number_json(c.mass_vs_hidden)}};
}

// The report as `--json` writes it (docs/cli.md).
ordered_json report_json(const analysis::SinkReport& r) {
  const int64_t L = r.n_layer, H = r.n_head;
  ordered_json j;
  j["tokens"] = r.tokens;
  j["n_layer"] = L;
  j["n_head"] = H;
  j["eps"] = r.eps;
  j["sink_rate"] = {{"first_64", r.sink_rate_first},
                    {"T", r.first_tokens},
                    {"stream", r.sink_rate_stream},
                    {"stream_tokens", r.tokens}};
  j["alpha1"] = table_json(r.alpha1, L, H);
  j["alpha1_first_64"] = table_json(r.alpha1_first, L, H);
  ordered_json alpha_k = ordered_json::object();
  for (size_t k = 0; k < r.alpha_k.size(); ++k)
    alpha_k[std::to_string(k + 1)] = table_json(r.alpha_k[k], L, H);
  j["alpha_k"] = alpha_k;
  j["detected_sinks"] = ordered_json::array();
  for (const auto& d : r.detected_sinks)
    j["detected_sinks"].push_back(
        {{"stream_index", d.stream_index}, {"heads_over_eps", d.heads_over_eps}});
  j["layers"] = ordered_json::array();
  for (const auto& lr : r.layers) {
    ordered_json lj;
    lj["layer"] = lr.layer;
    lj["local_window"] = lr.local_window;
    lj["alpha1_mean"] = number_json(lr.alpha1_mean);
    lj["top_stream"] = pairs_json(lr.top_stream);
    lj["top_rank"] = pairs_json(lr.top_rank);
    lj["hidden_norm_median"] = lr.hidden_norm_median;
    lj["first_token_norm_ratio"] = lr.first_token_norm_ratio;
    lj["sink_norm_ratio"] = pairs_json(lr.sink_norm_ratio);
    lj["first_token_value_norm"] = lr.first_token_value_norm;
    lj["other_value_norm_median"] = lr.other_value_norm_median;
    ordered_json dir = ordered_json::array();
    for (double x : lr.key0_cos_mean_key) dir.push_back(number_json(x));
    lj["key0_cos_mean_key"] = dir;
    j["layers"].push_back(lj);
  }
  j["mass_by_stream"] = r.mass_by_stream;
  j["mass_by_rank"] = r.mass_by_rank;
  j["hidden_norm"] = r.hidden_norm;
  return j;
}

ordered_json ablation_json(const analysis::AblationResult& r, const kv::PolicySpec& spec,
                           int64_t score_from) {
  ordered_json a;
  a["policy"] = spec.str();
  a["score_from"] = score_from;
  a["scored_tokens"] = r.scored;
  a["base_mean_nll"] = r.base_nll;
  a["mode"] = analysis::sink_ablation_name(r.modes[0].mode);
  a["all_heads_delta"] = r.all_heads_delta;
  a["layer_delta"] = r.layer_delta;
  if (!r.head_delta.empty()) a["head_delta"] = table_json(r.head_delta, r.n_layer, r.n_head);
  ordered_json modes = ordered_json::array();
  for (const analysis::AblationDeltas& d : r.modes) {
    ordered_json m;
    m["mode"] = analysis::sink_ablation_name(d.mode);
    m["all_heads_delta"] = d.all_heads_delta;
    m["layer_delta"] = d.layer_delta;
    if (!d.head_delta.empty()) m["head_delta"] = table_json(d.head_delta, r.n_layer, r.n_head);
    modes.push_back(m);
  }
  a["modes"] = modes;
  a["sink_mass"] = table_json(r.sink_mass, r.n_layer, r.n_head);
  a["sink_logit_mean"] = table_json(r.sink_logit_mean, r.n_layer, r.n_head);
  a["sink_hidden_ratio"] = r.sink_hidden_ratio;
  a["seconds"] = r.seconds;
  if (!r.head_delta.empty()) a["spearman"] = correlations_json(analysis::head_correlations(r));
  if (!r.layer_delta.empty())
    a["spearman_layers"] = correlations_json(analysis::layer_correlations(r));
  return a;
}

void print_report(const analysis::SinkReport& r, const std::string& model, const std::string& arch,
                  const std::string& policy, const std::string& what) {
  const int64_t L = r.n_layer, H = r.n_head, N = r.tokens;
  fmt::print("model    {} ({}, {} layers x {} heads)\n", model, arch, L, H);
  fmt::print("policy   {}\n", policy);
  fmt::print("stream   {}\n\n", what);
  fmt::print(
      "sink rate (alpha_1 > {}): {:.1f}% of {} heads over the first {} tokens (Gu et al.), "
      "{:.1f}% over {} tokens\n",
      r.eps, r.sink_rate_first, L * H, r.first_tokens, r.sink_rate_stream, N);
  fmt::print("detected sinks (alpha_k > eps in some head, k < {}):", std::max<int64_t>(1, N / 2));
  for (size_t i = 0; i < r.detected_sinks.size() && i < 12; ++i)
    fmt::print(" {} ({} heads)", r.detected_sinks[i].stream_index,
               r.detected_sinks[i].heads_over_eps);
  fmt::print("{}\n\n", r.detected_sinks.empty() ? " none" : "");
  fmt::print("{:>5} {:>6} {:>7}  {:<30} {:<30} {:>8} {:>9} {:>8}\n", "layer", "local", "alpha1",
             "top stream indices (mass)", "top cache positions (mass)", "norm(0)/", "v(0)/",
             "cos(k0,");
  fmt::print("{:>5} {:>6} {:>7}  {:<30} {:<30} {:>8} {:>9} {:>8}\n", "", "", "mean", "", "",
             "median", "median v", "mean k)");
  for (const auto& lr : r.layers) {
    std::string ts, tr;
    for (const auto& [k, x] : lr.top_stream) ts += fmt::format("{}({:.2f}) ", k, x);
    for (const auto& [k, x] : lr.top_rank) tr += fmt::format("{}({:.2f}) ", k, x);
    const double dir = lr.key0_cos_mean_key.empty() ? std::nan("") : lr.key0_cos_mean_key[0];
    fmt::print("{:>5} {:>6} {:>7.3f}  {:<30} {:<30} {:>8.2f} {:>9.2f} {:>8}\n", lr.layer,
               lr.local_window > 0 ? std::to_string(lr.local_window) : "-", lr.alpha1_mean, ts, tr,
               lr.first_token_norm_ratio, lr.first_token_value_norm / lr.other_value_norm_median,
               std::isnan(dir) ? std::string("-") : fmt::format("{:.2f}", dir));
  }
}

// The modes side by side: every head at once, then per layer.
void print_modes(const analysis::AblationResult& r) {
  fmt::print(
      "  the sinks taken apart (p: the sinks' share of a head's softmax, o_s their mean value, "
      "o_w the window's;\n  intact p o_s + (1 - p) o_w; mean NLL change with every head "
      "edited):\n");
  for (const analysis::AblationDeltas& d : r.modes)
    fmt::print("    {:<7} {:<52} {:+.4f}\n", analysis::sink_ablation_name(d.mode),
               mode_formula(d.mode), d.all_heads_delta);
  if (r.modes[0].layer_delta.empty()) return;
  fmt::print("  per layer (all heads of the layer):\n    {:>5}", "layer");
  for (const analysis::AblationDeltas& d : r.modes)
    fmt::print(" {:>8}", analysis::sink_ablation_name(d.mode));
  fmt::print("\n");
  for (int64_t l = 0; l < r.n_layer; ++l) {
    if (std::isnan(r.modes[0].layer_delta[static_cast<size_t>(l)])) continue;
    fmt::print("    {:>5}", l);
    for (const analysis::AblationDeltas& d : r.modes)
      fmt::print(" {:>+8.3f}", d.layer_delta[static_cast<size_t>(l)]);
    fmt::print("\n");
  }
}

void print_ablation(const analysis::AblationResult& r, const std::string& policy,
                    int64_t score_from) {
  const int64_t L = r.n_layer, H = r.n_head;
  fmt::print(
      "\nsink ablation under {}: {} scored tokens from stream index {}, base mean NLL {:.4f}\n",
      policy, r.scored, score_from, r.base_nll);
  const analysis::SinkAblation first = r.modes[0].mode;
  if (r.modes.size() > 1 || first != analysis::SinkAblation::kDrop) {
    print_modes(r);
  } else {
    fmt::print("  every head without its sinks: mean NLL {:+.4f}\n", r.all_heads_delta);
  }
  if (r.modes.size() == 1 && first == analysis::SinkAblation::kDrop && !r.layer_delta.empty()) {
    fmt::print("  per layer (all heads of the layer):");
    for (int64_t l = 0; l < L; ++l)
      fmt::print("{}{}:{:+.3f}", l % 10 ? " " : "\n    ", l, r.layer_delta[static_cast<size_t>(l)]);
    fmt::print("\n");
  }
  if (!r.head_delta.empty()) {
    const std::vector<double>& delta = r.head_delta;
    const std::vector<double>& mass = r.sink_mass;
    if (first == analysis::SinkAblation::kDrop)
      fmt::print("\n  heads ranked by causal dependence (mean NLL change without the sinks):\n");
    else
      fmt::print("\n  heads ranked by causal dependence (mean NLL change, {}: {}):\n",
                 analysis::sink_ablation_name(first), mode_formula(first));
    fmt::print("  {:>4} {:>6} {:>10} {:>10} {:>10} {:>12}\n", "rank", "head", "dNLL", "sink mass",
               "mass rank", "hidden ratio");
    // Heads with sink mass (a head whose layer keeps no sinks, e.g. a local layer under
    // local=native, has none: NaN) are ranked among themselves.
    const std::vector<double> mass_rank = analysis::ranks(mass);
    const auto n_mass =
        std::count_if(mass.begin(), mass.end(), [](double x) { return !std::isnan(x); });
    const auto n_no_sinks =
        std::count_if(mass.begin(), mass.end(), [](double x) { return std::isnan(x); });
    const auto top = analysis::top_indices(delta, 15);
    for (size_t i = 0; i < top.size(); ++i) {
      const auto k = static_cast<size_t>(top[i]);
      if (std::isnan(delta[k])) break;  // not ablated (no sink slots)
      fmt::print("  {:>4} {:>6} {:>+10.4f} {:>10} {:>10} {:>12.1f}\n", i + 1,
                 fmt::format("{}:{}", top[i] / H, top[i] % H), delta[k],
                 std::isnan(mass[k]) ? "-" : fmt::format("{:.3f}", mass[k]),
                 std::isnan(mass_rank[k])
                     ? "-"
                     : fmt::format("{:.0f}", static_cast<double>(n_mass) + 1 - mass_rank[k]),
                 r.sink_hidden_ratio[static_cast<size_t>(top[i] / H)]);
    }
    if (n_no_sinks > 0)
      fmt::print(
          "  ({} of {} heads keep no sink slots under this policy (layers with a native "
          "window): no sink mass, not ranked)\n",
          n_no_sinks, L * H);
    const analysis::SinkCorrelations c = analysis::head_correlations(r);
    fmt::print(
        "\n  Spearman rank correlations over the {} heads with both values: dNLL vs sink mass "
        "{:.2f}, dNLL vs sink hidden norm {:.2f}, sink mass vs hidden norm {:.2f}\n",
        c.pairs, c.delta_vs_mass, c.delta_vs_hidden, c.mass_vs_hidden);
  }
  fmt::print("  ({:.0f} s)\n", r.seconds);
}

void write_json(const ordered_json& j, const std::string& path) {
  write_file_atomic(path, j.dump() + "\n");
}

// Sum over the heads of one layer of a per-head table (NaN entries left out; NaN when all
// are).
double layer_sum(const std::vector<double>& v, int64_t l, int64_t H) {
  double s = 0;
  bool any = false;
  for (int64_t h = 0; h < H; ++h) {
    const double x = v[static_cast<size_t>(l * H + h)];
    if (std::isnan(x)) continue;
    s += x;
    any = true;
  }
  return any ? s : std::nan("");
}

void print_fit(const analysis::SinkFitResult& r, const std::string& model,
               const std::string& path) {
  const kv::VirtualSinks& vs = r.sinks;
  const int64_t L = vs.n_layer, H = vs.n_head;
  fmt::print("model    {} ({}, {} layers x {} heads)\n", model, vs.architecture, L, H);
  fmt::print("fit      {}\n", vs.calibration);
  fmt::print("written  {} ({})\n\n", path, vs.has_values() ? "logits and values" : "logits");
  fmt::print(
      "Squared error of each layer's head outputs against the real sinks' over the {} queries, "
      "relative to the window alone (1.000 = no better than no sink):\n",
      r.samples);
  fmt::print("{:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}\n", "layer", "mass", "exact",
             "frozen", "logit", "fit", "sinks", "|o|^2 rel");
  double tot[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t l = 0; l < L; ++l) {
    const double w = layer_sum(r.err_window, l, H);
    if (std::isnan(w)) continue;
    const double e[5] = {layer_sum(r.err_exact, l, H), layer_sum(r.err_frozen, l, H),
                         layer_sum(r.err_logit, l, H), layer_sum(r.err_fit, l, H),
                         layer_sum(r.target, l, H)};
    int64_t with_sink = 0;
    for (int64_t h = 0; h < H; ++h)
      with_sink += std::isfinite(vs.logits[static_cast<size_t>(l * H + h)]);
    fmt::print("{:>5} {:>6.3f} {:>8.3f} {:>8.3f} {:>8.3f} {:>8.3f} {:>5}/{:<2} {:>9.3f}\n", l,
               layer_sum(r.sink_mass, l, H) / static_cast<double>(H), e[0] / w, e[1] / w, e[2] / w,
               e[3] / w, with_sink, H, w / e[4]);
    tot[0] += w;
    for (int i = 0; i < 5; ++i) tot[i + 1] += e[i];
  }
  fmt::print("  all {:>6} {:>8.3f} {:>8.3f} {:>8.3f} {:>8.3f}\n", "", tot[1] / tot[0],
             tot[2] / tot[0], tot[3] / tot[0], tot[4] / tot[0]);
  fmt::print(
      "\n(mass: mean share of the real sinks; exact: their exact logit per query, no value; "
      "frozen: the logit nullsink:W's\ncalib=first:S freezes; logit: the fitted logit, no value; "
      "fit: the file's sinks; sinks: heads given a sink;\n|o|^2 rel: the window's error over "
      "the outputs' squared norm)\n  ({:.0f} s)\n",
      r.seconds);
}

ordered_json fit_json(const analysis::SinkFitResult& r, const std::string& path) {
  const int64_t L = r.sinks.n_layer, H = r.sinks.n_head;
  ordered_json j;
  j["file"] = path;
  j["calibration"] = r.sinks.calibration;
  j["fingerprint"] = fmt::format("{:016x}", r.sinks.model_fingerprint);
  j["samples"] = r.samples;
  std::vector<double> logits(r.sinks.logits.begin(), r.sinks.logits.end());
  for (double& x : logits)
    if (std::isinf(x)) x = std::nan("");  // no sink
  j["logit"] = table_json(logits, L, H);
  j["frozen_logit"] = table_json(r.frozen_logit, L, H);
  j["sink_mass"] = table_json(r.sink_mass, L, H);
  j["error"] = {
      {"window", table_json(r.err_window, L, H)}, {"exact", table_json(r.err_exact, L, H)},
      {"frozen", table_json(r.err_frozen, L, H)}, {"logit", table_json(r.err_logit, L, H)},
      {"fit", table_json(r.err_fit, L, H)},       {"target", table_json(r.target, L, H)}};
  j["seconds"] = r.seconds;
  return j;
}

int run_fit(const SinksOptions& o, bool policy_given, bool tokens_given) {
  if (o.text && o.text->empty()) throw InvalidArgument("sinks: --text is empty");
  if (o.skip < 0 || o.prefix_random < 0 || o.chunk < 1)
    throw InvalidArgument("sinks: --skip-tokens and --prefix-random must be >= 0, --chunk >= 1");
  const kv::PolicySpec spec(policy_given ? o.policy : std::string("sink:4+256"));
  const auto p = kv::make_policy(spec);
  if (spec.kind() != "sink" || p->n_sinks() < 1 || !p->capacity())
    throw InvalidArgument(fmt::format(
        "--fit-null imitates real sinks: it needs a sink:S+W policy, got '{}'", spec.str()));
  const int64_t tokens = tokens_given ? o.tokens : kDefaultFitTokens;
  if (tokens < *p->capacity() + 1)
    throw InvalidArgument(fmt::format(
        "--fit-null under {}: --tokens {} leaves no query past the full cache (at least {})",
        spec.str(), tokens, *p->capacity() + 1));
  auto model = model::Model::load(o.model);
  std::string what;
  const std::vector<TokenId> stream =
      stream_tokens(*model, o, tokens, "--tokens, the calibration stream", &what);
  analysis::SinkFitOptions fo;
  fo.policy = spec;
  fo.values = !o.fit_logit_only;
  fo.chunk = o.chunk;
  fo.threads = o.threads;
  fo.calibration = what;
  Progress progress("fit");
  fo.progress = [&](int64_t done, int64_t total) { progress.update(done, total); };
  const analysis::SinkFitResult r = analysis::fit_virtual_sinks(*model, stream, fo);
  progress.finish();
  kv::save_virtual_sinks(r.sinks, *o.fit_out);
  if (!o.quiet) print_fit(r, o.model, *o.fit_out);
  if (o.json_out) {
    ordered_json j;
    j["model"] = o.model;
    j["architecture"] = model->config().architecture;
    j["policy"] = spec.str();
    j["stream"] = what;
    j["fit"] = fit_json(r, *o.fit_out);
    write_json(j, *o.json_out);
  }
  return 0;
}

int run_sinks(const SinksOptions& o, bool policy_given) {
  if (o.file.has_value() == o.text.has_value())
    throw InvalidArgument("sinks: give exactly one of --file and --text");
  if (o.text && o.text->empty()) throw InvalidArgument("sinks: --text is empty");
  if (!(o.eps > 0 && o.eps <= 1))
    throw InvalidArgument(fmt::format("--eps {} outside (0, 1]", o.eps));
  if (o.tokens < 2) throw InvalidArgument(fmt::format("--tokens {} must be >= 2", o.tokens));
  if (o.skip < 0 || o.prefix_random < 0 || o.top < 1 || o.chunk < 1 || o.score_tokens < 1)
    throw InvalidArgument(
        "sinks: --skip-tokens and --prefix-random must be >= 0, --top, --chunk and "
        "--score-tokens >= 1");
  // With --ablate the policy must keep sinks; sink:4+252 unless one is given.
  const kv::PolicySpec spec(o.ablate && !policy_given ? std::string("sink:4+252") : o.policy);
  if (kv::make_policy(spec)->replay_from(0))
    throw InvalidArgument(fmt::format(
        "sinks: policy '{}' replays the window for every token; its attention is not a stream's",
        spec.str()));
  int64_t need = o.tokens;
  std::string why = "--tokens";
  if (o.ablate) {
    const auto p = kv::make_policy(spec);
    if (p->n_sinks() < 1 || !p->capacity())
      throw InvalidArgument(fmt::format(
          "--ablate needs a policy that keeps sink tokens (sink:S+W with S >= 1), got '{}'",
          spec.str()));
    need = std::max(need, *p->capacity() + 1 + o.score_tokens + 1);
    why = fmt::format("--tokens, or with --ablate: the cache of {} filled, then {} scored tokens",
                      spec.str(), o.score_tokens);
  }

  auto model = model::Model::load(o.model);
  const model::ModelConfig& c = model->config();
  std::vector<std::pair<int64_t, int64_t>> heads;
  for (const auto& s : o.heads) heads.push_back(parse_head(s, c));
  for (int64_t l : o.layers)
    if (l < 0 || l >= c.n_layer)
      throw InvalidArgument(fmt::format("--layer {}: outside [0, {})", l, c.n_layer));
  std::string what;
  const std::vector<TokenId> stream = stream_tokens(*model, o, need, why, &what);

  analysis::SinkReportOptions ro;
  ro.policy = spec;
  ro.tokens = o.tokens;
  ro.eps = o.eps;
  ro.top = o.top;
  ro.chunk = o.chunk;
  ro.threads = o.threads;
  const analysis::SinkReport report = analysis::sink_report(*model, stream, ro);
  ordered_json j;
  j["model"] = o.model;
  j["architecture"] = c.architecture;
  j["policy"] = spec.str();
  j["stream"] = what;
  j.update(report_json(report));

  // Causal dependence.
  std::optional<analysis::AblationResult> ablation;
  analysis::AblationOptions ao;
  if (o.ablate) {
    ao.policy = spec;
    ao.score_from = static_cast<int64_t>(stream.size()) - o.score_tokens;
    ao.chunk = o.chunk;
    ao.threads = o.threads;
    ao.per_head = !o.layers_only;
    ao.layers = o.layers;
    ao.heads = heads;
    // Heads asked for by name: those only, no per-layer pass unless layers are named too.
    ao.per_layer = heads.empty() || !o.layers.empty();
    ao.modes = parse_modes(o.ablate_modes);
    Progress progress("ablation");
    ao.progress = [&](int64_t done, int64_t total) { progress.update(done, total); };
    ablation = analysis::ablate_sinks(*model, stream, ao);
    progress.finish();
    j["ablation"] = ablation_json(*ablation, spec, ao.score_from);
  }

  if (!o.quiet) {
    print_report(report, o.model, c.architecture, spec.str(), what);
    if (ablation) print_ablation(*ablation, spec.str(), ao.score_from);
  }
  if (o.json_out) write_json(j, *o.json_out);
  if (o.plot_dir) {
    std::filesystem::create_directories(*o.plot_dir);
    const std::string json_path =
        o.json_out.value_or((std::filesystem::path(*o.plot_dir) / "sinks.json").string());
    if (!o.json_out) write_json(j, json_path);
    const std::string cmd =
        fmt::format("python3 '{}' '{}' '{}'", plot_script(), json_path, *o.plot_dir);
    if (std::system(cmd.c_str()) != 0)
      throw Error(fmt::format("plotting failed ({}); the data is at '{}'", cmd, json_path));
    fmt::print(stderr, "plots written to {}\n", *o.plot_dir);
  }
  return 0;
}

Registrar reg("sinks", [](CLI::App& app) {
  auto o = std::make_shared<SinksOptions>();
  auto* sub = app.add_subcommand(
      "sinks", "Where attention mass goes: sink scores, sink rate, massive activations, ablation");
  sub->add_option("--model,-m", o->model, "GGUF model file")->capture_default_str();
  sub->add_option("--file,-f", o->file, "Text file to stream");
  sub->add_option("--text", o->text, "Text to stream");
  auto* pol = sub->add_option(
      "--policy,-p", o->policy,
      "KV-cache policy (default full; sink:4+252 with --ablate): " + kv::policy_usage());
  sub->add_option("--tokens,-n", o->tokens, "Tokens whose attention is recorded")
      ->capture_default_str();
  sub->add_option("--skip-tokens", o->skip, "Start the text N tokens in (e.g. mid-sentence)");
  sub->add_option("--prefix", o->prefix, "Text whose tokens go first (after BOS, if any)");
  sub->add_option("--prefix-random", o->prefix_random,
                  "N random ordinary tokens after the prefix (seeded)");
  sub->add_option("--seed", o->seed, "Seed of --prefix-random")->capture_default_str();
  sub->add_flag("--no-bos", o->no_bos, "Do not start the stream with BOS even if the model does");
  sub->add_option("--eps", o->eps, "Sink score threshold of the sink rate, in (0, 1]")
      ->capture_default_str();
  sub->add_option("--top", o->top, "Positions listed per layer")->capture_default_str();
  sub->add_option("--threads,-t", o->threads, "Threads (0: all cores)");
  sub->add_option("--chunk", o->chunk, "Tokens per forward pass")->capture_default_str();
  sub->add_option("--json", o->json_out, "Write every statistic as JSON");
  sub->add_option("--plot", o->plot_dir, "Draw PNG plots into this directory");
  sub->add_flag("--ablate", o->ablate,
                "Causal dependence: remove each head's sink slots from its softmax and measure "
                "the NLL change");
  sub->add_option("--score-tokens", o->score_tokens,
                  "Scored tokens of the ablation (after the window is full)")
      ->capture_default_str();
  sub->add_flag("--layers-only", o->layers_only, "Ablate whole layers only (fast first pass)");
  sub->add_option("--layer", o->layers, "Ablate only this layer (repeatable)");
  sub->add_option("--head", o->heads, "Ablate only this head, LAYER:HEAD (repeatable)");
  sub->add_option("--ablate-mode", o->ablate_modes,
                  "What an ablated head loses (repeatable, comma-separated): drop (the sinks), "
                  "keys (their value: mass kept), values (their mass: value kept), logit (the "
                  "sinks as a constant value-less logit), all")
      ->delimiter(',');
  sub->add_option("--fit-null", o->fit_out,
                  "Fit virtual sinks to the real ones of --policy (default sink:4+256) over "
                  "--tokens tokens (default 2048) and write them to this file, for "
                  "nullsink:W,fit=FILE");
  sub->add_flag("--fit-logit-only", o->fit_logit_only,
                "With --fit-null: fit a logit per head and no value");
  sub->add_flag("--quiet,-q", o->quiet, "Print nothing (with --json/--plot)");
  auto* tok = sub->get_option("--tokens");
  return [o, pol, tok] {
    if (o->fit_out) {
      if (o->ablate || o->plot_dir)
        throw InvalidArgument("sinks: --fit-null goes without --ablate and --plot");
      if (o->file.has_value() == o->text.has_value())
        throw InvalidArgument("sinks: give exactly one of --file and --text");
      return run_fit(*o, pol->count() > 0, tok->count() > 0);
    }
    if (o->fit_logit_only) throw InvalidArgument("sinks: --fit-logit-only needs --fit-null");
    if (!o->ablate_modes.empty() && !o->ablate)
      throw InvalidArgument("sinks: --ablate-mode needs --ablate");
    return run_sinks(*o, pol->count() > 0);
  };
});

}  // namespace
}  // namespace spillway::cli
