// spillway sinks: where the model dumps its attention surplus. Sink scores and the sink
// rate (Gu et al.), which stream indices and cache positions receive the mass, massive
// activations and value norms of the sinks, the sink key's direction, and with --ablate the
// causal dependence of every head on its sink slots.
#include <fmt/core.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/analysis/attention_stats.h"
#include "spillway/analysis/sinks.h"
#include "spillway/core/error.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util.h"

namespace spillway::cli {
namespace {

using analysis::AttentionStats;
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
  bool quiet = false;
};

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
  const std::string text = o.file ? read_text_file(*o.file) : *o.text;
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

// Mean over heads of a [layer][head] table.
double layer_mean(const std::vector<double>& v, int64_t l, int64_t n_head) {
  double s = 0;
  int64_t n = 0;
  for (int64_t h = 0; h < n_head; ++h) {
    const double x = v[static_cast<size_t>(l * n_head + h)];
    if (!std::isnan(x)) {
      s += x;
      ++n;
    }
  }
  return n ? s / static_cast<double>(n) : std::nan("");
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
  ThreadPool pool(o.threads);

  // The recorded stream: the first --tokens tokens under the policy.
  SessionOptions so;
  so.policy = spec;
  so.max_batch = o.chunk;
  so.max_stream = o.tokens;
  Session session(*model, so, &pool);
  AttentionStats stats(c, {0, o.tokens, true, 16});
  session.set_observer(&stats);
  session.advance(std::span(stream).first(static_cast<size_t>(o.tokens)));
  session.set_observer(nullptr);

  // Gu et al.'s protocol: the first T = 64 tokens with full attention.
  const int64_t T = std::min<int64_t>(64, o.tokens);
  SessionOptions so64;
  so64.policy = "full";
  so64.max_batch = o.chunk;
  Session s64(*model, so64, &pool);
  AttentionStats stats64(c, {0, T, true, 0});
  s64.set_observer(&stats64);
  s64.advance(std::span(stream).first(static_cast<size_t>(T)));

  const int64_t L = c.n_layer, H = c.n_head, NKV = c.n_head_kv, N = o.tokens;
  const std::vector<double> alpha1 = analysis::sink_scores(stats, 0);
  const std::vector<double> alpha1_64 = analysis::sink_scores(stats64, 0);
  const double rate = analysis::sink_rate(alpha1, o.eps);
  const double rate64 = analysis::sink_rate(alpha1_64, o.eps);

  // Detected sinks: stream indices in the first half of the recorded range with
  // alpha_k > eps in at least one head (later keys are seen by too few queries).
  std::vector<int64_t> sinks;
  std::vector<int64_t> sink_heads;
  for (int64_t k = 0; k < std::max<int64_t>(1, N / 2); ++k) {
    const auto a = analysis::sink_scores(stats, k);
    const int64_t n_over = std::count_if(a.begin(), a.end(), [&](double x) { return x > o.eps; });
    if (n_over > 0) {
      sinks.push_back(k);
      sink_heads.push_back(n_over);
    }
  }

  // Per layer: where the mass goes (mean over heads and queries), massive activations,
  // value norms, key direction.
  ordered_json layers = ordered_json::array();
  std::vector<std::vector<double>> stream_share(static_cast<size_t>(L)),
      rank_share(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    std::vector<double>& ss = stream_share[static_cast<size_t>(l)];
    ss.assign(static_cast<size_t>(stats.n_keys()), 0.0);
    std::vector<double>& rs = rank_share[static_cast<size_t>(l)];
    rs.assign(stats.queries_by_rank(l).size(), 0.0);
    for (int64_t h = 0; h < H; ++h) {
      const auto& m = stats.mass_by_stream(l, h);
      for (size_t k = 0; k < m.size(); ++k) ss[k] += m[k] / static_cast<double>(H * N);
      const auto& mr = stats.mass_by_rank(l, h);
      for (size_t r = 0; r < mr.size(); ++r) rs[r] += mr[r] / static_cast<double>(H * N);
    }
    std::vector<double> norms, vnorm_other;
    for (int64_t i = 0; i < N; ++i) norms.push_back(stats.hidden_norm(l, i));
    const double med = analysis::median(norms);
    ordered_json lj;
    lj["layer"] = l;
    lj["local_window"] = c.layers[static_cast<size_t>(l)].window;
    lj["alpha1_mean"] = layer_mean(alpha1, l, H);
    ordered_json top_s = ordered_json::array(), top_r = ordered_json::array();
    for (int64_t k : analysis::top_indices(ss, o.top))
      top_s.push_back({k, ss[static_cast<size_t>(k)]});
    for (int64_t r : analysis::top_indices(rs, o.top))
      top_r.push_back({r, rs[static_cast<size_t>(r)]});
    lj["top_stream"] = top_s;
    lj["top_rank"] = top_r;
    lj["hidden_norm_median"] = med;
    lj["first_token_norm_ratio"] = norms[0] / med;
    ordered_json sink_ratio = ordered_json::array();
    for (int64_t k : sinks)
      if (k < N) sink_ratio.push_back({k, norms[static_cast<size_t>(k)] / med});
    lj["sink_norm_ratio"] = sink_ratio;
    // Value norms: sinks against the others' median, per KV head (mean over KV heads).
    double vs = 0, vo = 0;
    for (int64_t g = 0; g < NKV; ++g) {
      std::vector<double> other;
      for (int64_t i = 0; i < N; ++i)
        if (std::find(sinks.begin(), sinks.end(), i) == sinks.end())
          other.push_back(stats.value_norm(l, i, g));
      vo += analysis::median(other) / static_cast<double>(NKV);
      vs += stats.value_norm(l, 0, g) / static_cast<double>(NKV);
    }
    lj["first_token_value_norm"] = vs;
    lj["other_value_norm_median"] = vo;
    // Key direction: the first token's un-rotated key against the mean key of the
    // recorded tokens from index 16 on.
    ordered_json dir = ordered_json::array();
    for (int64_t g = 0; g < NKV; ++g) {
      const auto k0 = stats.key(l, g, 0);
      const auto km = stats.mean_key(l, g);
      dir.push_back(km.empty() || k0.empty() ? ordered_json(nullptr)
                                             : ordered_json(analysis::cosine(k0, km)));
    }
    lj["key0_cos_mean_key"] = dir;
    layers.push_back(lj);
  }

  ordered_json j;
  j["model"] = o.model;
  j["architecture"] = c.architecture;
  j["policy"] = spec.str();
  j["stream"] = what;
  j["tokens"] = N;
  j["n_layer"] = L;
  j["n_head"] = H;
  j["eps"] = o.eps;
  j["sink_rate"] = {{"first_64", rate64}, {"T", T}, {"stream", rate}, {"stream_tokens", N}};
  j["alpha1"] = table_json(alpha1, L, H);
  j["alpha1_first_64"] = table_json(alpha1_64, L, H);
  ordered_json alpha_k = ordered_json::object();
  for (int64_t k = 1; k < std::min<int64_t>(8, N); ++k)
    alpha_k[std::to_string(k)] = table_json(analysis::sink_scores(stats, k), L, H);
  j["alpha_k"] = alpha_k;
  j["detected_sinks"] = ordered_json::array();
  for (size_t i = 0; i < sinks.size(); ++i)
    j["detected_sinks"].push_back({{"stream_index", sinks[i]}, {"heads_over_eps", sink_heads[i]}});
  j["layers"] = layers;
  ordered_json mass_stream = ordered_json::array(), mass_rank = ordered_json::array(),
               hidden = ordered_json::array();
  for (int64_t l = 0; l < L; ++l) {
    mass_stream.push_back(stream_share[static_cast<size_t>(l)]);
    mass_rank.push_back(rank_share[static_cast<size_t>(l)]);
  }
  for (int64_t l = 0; l <= L; ++l) {
    std::vector<double> v;
    for (int64_t i = 0; i < N; ++i) v.push_back(stats.hidden_norm(l, i));
    hidden.push_back(v);
  }
  j["mass_by_stream"] = mass_stream;
  j["mass_by_rank"] = mass_rank;
  j["hidden_norm"] = hidden;

  // Causal dependence.
  if (o.ablate) {
    analysis::AblationOptions ao;
    ao.policy = spec;
    ao.score_from = static_cast<int64_t>(stream.size()) - o.score_tokens;
    ao.chunk = o.chunk;
    ao.threads = o.threads;
    ao.per_head = !o.layers_only;
    ao.layers = o.layers;
    ao.heads = heads;
    // Heads asked for by name: those only, no per-layer pass unless layers are named too.
    ao.per_layer = heads.empty() || !o.layers.empty();
    Progress progress("ablation");
    ao.progress = [&](int64_t done, int64_t total) { progress.update(done, total); };
    const analysis::AblationResult r = analysis::ablate_sinks(*model, stream, ao);
    progress.finish();
    ordered_json a;
    a["policy"] = spec.str();
    a["score_from"] = ao.score_from;
    a["scored_tokens"] = r.scored;
    a["base_mean_nll"] = r.base_nll;
    a["all_heads_delta"] = r.all_heads_delta;
    a["layer_delta"] = r.layer_delta;
    if (!r.head_delta.empty()) a["head_delta"] = table_json(r.head_delta, L, H);
    a["sink_mass"] = table_json(r.sink_mass, L, H);
    a["sink_hidden_ratio"] = r.sink_hidden_ratio;
    a["seconds"] = r.seconds;
    if (!r.head_delta.empty()) {
      std::vector<double> hidden_per_head;
      for (int64_t l = 0; l < L; ++l)
        for (int64_t h = 0; h < H; ++h)
          hidden_per_head.push_back(r.sink_hidden_ratio[static_cast<size_t>(l)]);
      a["spearman"] = {{"delta_vs_mass", analysis::spearman(r.head_delta, r.sink_mass)},
                       {"delta_vs_hidden", analysis::spearman(r.head_delta, hidden_per_head)},
                       {"mass_vs_hidden", analysis::spearman(r.sink_mass, hidden_per_head)}};
    }
    if (!r.layer_delta.empty()) {
      std::vector<double> layer_mass;
      for (int64_t l = 0; l < L; ++l) layer_mass.push_back(layer_mean(r.sink_mass, l, H));
      a["spearman_layers"] = {
          {"delta_vs_mass", analysis::spearman(r.layer_delta, layer_mass)},
          {"delta_vs_hidden", analysis::spearman(r.layer_delta, r.sink_hidden_ratio)},
          {"mass_vs_hidden", analysis::spearman(layer_mass, r.sink_hidden_ratio)}};
    }
    j["ablation"] = a;
  }

  if (!o.quiet) {
    fmt::print("model    {} ({}, {} layers x {} heads)\n", o.model, c.architecture, L, H);
    fmt::print("policy   {}\n", spec.str());
    fmt::print("stream   {}\n\n", what);
    fmt::print(
        "sink rate (alpha_1 > {}): {:.1f}% of {} heads over the first {} tokens (Gu et al.), "
        "{:.1f}% over {} tokens\n",
        o.eps, rate64, L * H, T, rate, N);
    fmt::print("detected sinks (alpha_k > eps in some head, k < {}):", std::max<int64_t>(1, N / 2));
    for (size_t i = 0; i < sinks.size() && i < 12; ++i)
      fmt::print(" {} ({} heads)", sinks[i], sink_heads[i]);
    fmt::print("{}\n\n", sinks.empty() ? " none" : "");
    fmt::print("{:>5} {:>6} {:>7}  {:<30} {:<30} {:>8} {:>9} {:>8}\n", "layer", "local", "alpha1",
               "top stream indices (mass)", "top cache positions (mass)", "norm(0)/", "v(0)/",
               "cos(k0,");
    fmt::print("{:>5} {:>6} {:>7}  {:<30} {:<30} {:>8} {:>9} {:>8}\n", "", "", "mean", "", "",
               "median", "median v", "mean k)");
    for (const auto& lj : layers) {
      std::string ts, tr;
      for (const auto& e : lj["top_stream"])
        ts += fmt::format("{}({:.2f}) ", e[0].get<int64_t>(), e[1].get<double>());
      for (const auto& e : lj["top_rank"])
        tr += fmt::format("{}({:.2f}) ", e[0].get<int64_t>(), e[1].get<double>());
      const auto& dir = lj["key0_cos_mean_key"];
      fmt::print(
          "{:>5} {:>6} {:>7.3f}  {:<30} {:<30} {:>8.2f} {:>9.2f} {:>8}\n",
          lj["layer"].get<int64_t>(),
          lj["local_window"].get<int64_t>() > 0 ? std::to_string(lj["local_window"].get<int64_t>())
                                                : "-",
          lj["alpha1_mean"].is_null() ? std::nan("") : lj["alpha1_mean"].get<double>(), ts, tr,
          lj["first_token_norm_ratio"].get<double>(),
          lj["first_token_value_norm"].get<double>() / lj["other_value_norm_median"].get<double>(),
          dir[0].is_null() ? std::string("-") : fmt::format("{:.2f}", dir[0].get<double>()));
    }
    if (o.ablate) {
      const auto& a = j["ablation"];
      fmt::print(
          "\nsink ablation under {}: {} scored tokens from stream index {}, base mean NLL "
          "{:.4f}\n",
          spec.str(), a["scored_tokens"].get<int64_t>(), a["score_from"].get<int64_t>(),
          a["base_mean_nll"].get<double>());
      fmt::print("  every head without its sinks: mean NLL {:+.4f}\n",
                 a["all_heads_delta"].get<double>());
      if (!a["layer_delta"].empty()) {
        fmt::print("  per layer (all heads of the layer):");
        int64_t l = 0;
        for (const auto& d : a["layer_delta"])
          fmt::print("{}{}:{:+.3f}", l % 10 ? " " : "\n    ", l, d.get<double>()), ++l;
        fmt::print("\n");
      }
      if (a.contains("head_delta")) {
        std::vector<double> delta;
        for (const auto& row : a["head_delta"])
          for (const auto& x : row) delta.push_back(x.is_null() ? std::nan("") : x.get<double>());
        std::vector<double> mass;
        for (const auto& row : a["sink_mass"])
          for (const auto& x : row) mass.push_back(x.is_null() ? std::nan("") : x.get<double>());
        fmt::print("\n  heads ranked by causal dependence (mean NLL change without the sinks):\n");
        fmt::print("  {:>4} {:>6} {:>10} {:>10} {:>10} {:>12}\n", "rank", "head", "dNLL",
                   "sink mass", "mass rank", "hidden ratio");
        // Heads with sink mass (a head whose layer keeps no sinks, e.g. a local layer
        // under local=native, has none: NaN) are ranked among themselves.
        const std::vector<double> mass_rank = analysis::ranks(mass);
        const auto n_mass =
            std::count_if(mass.begin(), mass.end(), [](double x) { return !std::isnan(x); });
        int64_t n_pairs = 0, n_no_sinks = 0;
        for (size_t k = 0; k < delta.size(); ++k) {
          if (!std::isnan(delta[k]) && !std::isnan(mass[k])) ++n_pairs;
          if (std::isnan(mass[k])) ++n_no_sinks;
        }
        const auto top = analysis::top_indices(delta, 15);
        for (size_t i = 0; i < top.size(); ++i) {
          const int64_t k = top[i];
          const auto kk = static_cast<size_t>(k);
          if (std::isnan(delta[kk])) break;  // not ablated (no sink slots)
          fmt::print("  {:>4} {:>6} {:>+10.4f} {:>10} {:>10} {:>12.1f}\n", i + 1,
                     fmt::format("{}:{}", k / H, k % H), delta[kk],
                     std::isnan(mass[kk]) ? "-" : fmt::format("{:.3f}", mass[kk]),
                     std::isnan(mass_rank[kk])
                         ? "-"
                         : fmt::format("{:.0f}", static_cast<double>(n_mass) + 1 - mass_rank[kk]),
                     a["sink_hidden_ratio"][static_cast<size_t>(k / H)].get<double>());
        }
        if (n_no_sinks > 0)
          fmt::print(
              "  ({} of {} heads keep no sink slots under this policy (layers with a native "
              "window): no sink mass, not ranked)\n",
              n_no_sinks, L * H);
        const auto& sp = a["spearman"];
        auto num = [](const nlohmann::json& x) {
          return x.is_null() ? std::nan("") : x.get<double>();
        };
        fmt::print(
            "\n  Spearman rank correlations over the {} heads with both values: dNLL vs sink "
            "mass {:.2f}, dNLL vs sink hidden norm {:.2f}, sink mass vs hidden norm {:.2f}\n",
            n_pairs, num(sp["delta_vs_mass"]), num(sp["delta_vs_hidden"]),
            num(sp["mass_vs_hidden"]));
      }
      fmt::print("  ({:.0f} s)\n", a["seconds"].get<double>());
    }
  }

  if (o.json_out) {
    std::ofstream f(*o.json_out);
    if (!f) throw IoError(fmt::format("cannot open '{}' for writing", *o.json_out));
    f << j.dump() << "\n";
    if (!f) throw IoError(fmt::format("error writing '{}'", *o.json_out));
  }
  if (o.plot_dir) {
    std::filesystem::create_directories(*o.plot_dir);
    std::string json_path =
        o.json_out.value_or((std::filesystem::path(*o.plot_dir) / "sinks.json").string());
    if (!o.json_out) {
      std::ofstream f(json_path);
      if (!f) throw IoError(fmt::format("cannot open '{}' for writing", json_path));
      f << j.dump() << "\n";
    }
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
  sub->add_flag("--quiet,-q", o->quiet, "Print nothing (with --json/--plot)");
  return [o, pol] { return run_sinks(*o, pol->count() > 0); };
});

}  // namespace
}  // namespace spillway::cli
