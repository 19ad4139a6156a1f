// spillway ppl: streaming perplexity of a text under one or more KV-cache policies.
#include <fmt/core.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/core/stats.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/session/perplexity.h"
#include "util.h"

namespace spillway::cli {
namespace {

struct PplOptions {
  std::string model = kDefaultModel;
  std::string file;
  std::vector<std::string> policies;
  int64_t max_tokens = 0;
  int64_t skip_tokens = 0;
  int64_t score_from = 1;
  int64_t chunk = 128;
  int threads = 0;
  std::optional<std::string> replace_head;
  std::optional<std::string> reference;
  std::optional<std::string> json_out, csv_out, plot_out;
  std::string title;
};

std::string plot_script() {
  if (const char* p = std::getenv("SPILLWAY_PLOT_SCRIPT")) return p;
  return std::string(SPILLWAY_SCRIPTS_DIR) + "/plot-ppl.py";
}

// token, then per policy its NLL column (and with a reference kl:<spec> and top1:<spec>),
// every value with the digits that give its float back.
void write_csv(const std::string& path, const std::vector<PerplexityResult>& results) {
  std::ostringstream f;
  f << "token";
  for (const auto& r : results) {
    f << "," << r.spec;
    if (!r.kl.empty()) f << ",kl:" << r.spec << ",top1:" << r.spec;
  }
  f << "\n";
  int64_t first = results[0].first_target, last = first + results[0].tokens;
  for (const auto& r : results) {
    first = std::min(first, r.first_target);
    last = std::max(last, r.first_target + r.tokens);
  }
  for (int64_t i = first; i < last; ++i) {
    f << i;
    for (const auto& r : results) {
      const int64_t k = i - r.first_target;
      const bool in = k >= 0 && k < r.tokens;
      const auto kk = static_cast<size_t>(k);
      f << ",";
      if (in) f << fmt::format("{:.9g}", r.nll[kk]);
      if (!r.kl.empty()) {
        f << ",";
        if (in) f << fmt::format("{:.9g}", r.kl[kk]);
        f << ",";
        if (in) f << static_cast<int>(r.top1_agree[kk]);
      }
    }
    f << "\n";
  }
  write_file_atomic(path, f.str());
}

int run_ppl(const PplOptions& o) {
  if (o.policies.empty()) throw InvalidArgument("ppl: give at least one --policy");
  // Parse every spec before the long work starts (a bad one is a usage error).
  std::vector<kv::PolicySpec> specs(o.policies.begin(), o.policies.end());
  std::optional<kv::PolicySpec> reference;
  if (o.reference) reference = kv::PolicySpec(*o.reference);
  if (o.max_tokens < 0 || o.skip_tokens < 0)
    throw InvalidArgument("ppl: --max-tokens and --skip-tokens must be >= 0");
  std::ifstream in(o.file, std::ios::binary);
  if (!in) throw IoError(fmt::format("cannot open '{}' for reading", o.file));
  auto model = model::Model::load(o.model);
  const Tokenizer& tok = model->tokenizer();
  // Streamed from the file: with --max-tokens only the text those tokens need is read
  // (memory stays bounded for a file of any size).
  const int64_t need = o.max_tokens > 0 ? o.skip_tokens + o.max_tokens : 0;
  std::vector<TokenId> tokens = encode_stream(tok, in, o.file, need);
  if (o.skip_tokens > 0) {
    if (o.skip_tokens >= static_cast<int64_t>(tokens.size()))
      throw InvalidArgument(fmt::format("--skip-tokens {} but '{}' has only {} tokens",
                                        o.skip_tokens, o.file, tokens.size()));
    tokens.erase(tokens.begin(), tokens.begin() + o.skip_tokens);
  }
  if (o.max_tokens > 0 && static_cast<int64_t>(tokens.size()) > o.max_tokens)
    tokens.resize(static_cast<size_t>(o.max_tokens));
  if (tokens.size() < 2)
    throw InvalidArgument(
        fmt::format("'{}' gives {} token(s); perplexity needs at least 2", o.file, tokens.size()));
  if (o.replace_head) {
    EncodeOptions no_bos;
    no_bos.add_bos = false;
    const std::vector<TokenId> head = tok.encode(*o.replace_head, no_bos);
    if (head.empty() || head.size() >= tokens.size())
      throw InvalidArgument("--replace-head text must give between 1 and stream-length tokens");
    std::copy(head.begin(), head.end(), tokens.begin());
  }
  const int64_t n_ctx = model->config().n_ctx_train;
  ThreadPool pool(o.threads);
  fmt::print(stderr, "{}: {} tokens of {}, {} thread(s)\n", o.model, tokens.size(), o.file,
             pool.size());

  std::vector<PerplexityResult> results;
  for (const auto& spec : specs) {
    PerplexityOptions po;
    po.policy = spec;
    po.chunk = o.chunk;
    po.score_from = o.score_from;
    po.reference = reference;
    if (!kv::make_policy(spec)->capacity() && static_cast<int64_t>(tokens.size()) > n_ctx)
      fmt::print(stderr,
                 "warning: policy '{}' runs {} tokens, past the model's trained context of {}\n",
                 spec.str(), tokens.size(), n_ctx);
    Progress progress(spec.str());
    po.progress = [&](int64_t done, int64_t total) { progress.update(done, total); };
    results.push_back(evaluate_perplexity(*model, tokens, po, &pool));
    progress.finish();
  }

  fmt::print("{:<34} {:>8} {:>12} {:>9} {:>10} {:>12}", "policy", "tokens", "perplexity",
             "mean NLL", "tokens/s", "peak KV");
  if (reference) fmt::print(" {:>10} {:>8}", "KL", "top-1");
  fmt::print("\n");
  for (const auto& r : results) {
    fmt::print("{:<34} {:>8} {:>12.3f} {:>9.4f} {:>10.1f} {:>12}", r.spec, r.tokens, r.ppl,
               r.mean_nll, r.tokens_per_s, human_bytes(r.kv_bytes_peak));
    if (reference) fmt::print(" {:>10.5f} {:>7.1f}%", r.kl_mean, 100.0 * r.top1_agree_rate);
    fmt::print("\n");
  }
  if (reference)
    fmt::print(
        "(KL: mean KL({} || policy) of the next-token distributions, nats; top-1: "
        "tokens where both put the most mass on the same token)\n",
        results[0].reference_spec);

  // Every policy scored the same targets of the same stream: each against the first, token
  // by token.
  std::vector<stats::PairedDifference> paired(results.size());
  const std::vector<double> first_nll(results[0].nll.begin(), results[0].nll.end());
  for (size_t i = 1; i < results.size(); ++i)
    paired[i] = stats::paired_difference(
        first_nll, std::vector<double>(results[i].nll.begin(), results[i].nll.end()));
  if (results.size() > 1) {
    fmt::print(
        "paired against {} on the same {} tokens (mean NLL difference, 95 % interval; "
        "perplexity ratio):\n",
        results[0].spec, results[0].tokens);
    for (size_t i = 1; i < results.size(); ++i) {
      const stats::PairedDifference& d = paired[i];
      fmt::print("  {:<32} {:+.4f} ({:+.4f} .. {:+.4f}); x{:.3f} ({:.3f} .. {:.3f})\n",
                 results[i].spec, d.mean, d.low, d.high, std::exp(d.mean), std::exp(d.low),
                 std::exp(d.high));
    }
  }

  if (o.json_out) {
    nlohmann::json j;
    j["model"] = o.model;
    j["file"] = o.file;
    j["stream_tokens"] = tokens.size();
    j["chunk"] = o.chunk;
    j["threads"] = pool.size();
    for (size_t i = 0; i < results.size(); ++i) {
      const PerplexityResult& r = results[i];
      nlohmann::json p;
      p["spec"] = r.spec;
      p["tokens"] = r.tokens;
      p["first_target"] = r.first_target;
      p["ppl"] = r.ppl;
      p["mean_nll"] = r.mean_nll;
      p["tokens_per_s"] = r.tokens_per_s;
      p["seconds"] = r.seconds;
      p["kv_bytes_peak"] = r.kv_bytes_peak;
      p["kv_slots"] = r.kv_slots;
      p["capacity"] = r.capacity ? nlohmann::json(*r.capacity) : nlohmann::json(nullptr);
      p["nll"] = r.nll;
      if (i > 0) {
        const stats::PairedDifference& d = paired[i];
        const auto num = [](double x) {
          return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
        };
        p["paired_vs_first"] = {{"against", results[0].spec},
                                {"tokens", d.n},
                                {"mean_nll_difference", num(d.mean)},
                                {"low", num(d.low)},
                                {"high", num(d.high)}};
      }
      if (!r.kl.empty()) {
        p["reference"] = r.reference_spec;
        p["kl_mean"] = r.kl_mean;
        p["top1_agree"] = r.top1_agree_rate;
        p["reference_mean_nll"] = r.reference_mean_nll;
        p["kl"] = r.kl;
      }
      j["policies"].push_back(p);
    }
    write_file_atomic(*o.json_out, j.dump() + "\n");
  }
  std::string csv = o.csv_out.value_or("");
  if (o.plot_out && csv.empty()) csv = *o.plot_out + ".csv";
  if (!csv.empty()) write_csv(csv, results);
  if (o.plot_out) {
    const std::string title =
        o.title.empty() ? fmt::format("{} on {}", std::filesystem::path(o.model).stem().string(),
                                      std::filesystem::path(o.file).filename().string())
                        : o.title;
    const std::string cmd =
        fmt::format("python3 '{}' '{}' '{}' --title '{}'", plot_script(), csv, *o.plot_out, title);
    if (std::system(cmd.c_str()) != 0)
      throw Error(fmt::format("plotting failed ({}); the CSV is at '{}'", cmd, csv));
    fmt::print(stderr, "plot written to {}\n", *o.plot_out);
  }
  return 0;
}

Registrar reg("ppl", [](CLI::App& app) {
  auto o = std::make_shared<PplOptions>();
  auto* sub = app.add_subcommand("ppl", "Streaming perplexity of a text under KV-cache policies");
  sub->add_option("--model,-m", o->model, "GGUF model file")->capture_default_str();
  sub->add_option("--file,-f", o->file, "Text file to stream")->required();
  sub->add_option("--policy,-p", o->policies, "Policy spec, repeatable: " + kv::policy_usage())
      ->required();
  sub->add_option("--max-tokens", o->max_tokens, "Stream at most N tokens (0: all)");
  sub->add_option("--skip-tokens", o->skip_tokens, "Start the stream N tokens into the text");
  sub->add_option("--score-from", o->score_from,
                  "Score tokens from this stream index on (earlier ones only fill the cache)")
      ->capture_default_str();
  sub->add_option("--chunk", o->chunk, "Tokens per forward pass (1: per-token decode)")
      ->capture_default_str();
  sub->add_option("--threads,-t", o->threads, "Threads (0: all cores)");
  sub->add_option("--replace-head", o->replace_head,
                  "Replace the stream's first tokens with this text's tokens (e.g. four newlines)");
  sub->add_option("--reference", o->reference,
                  "Run this policy (e.g. full, recompute:W) in lockstep and report each "
                  "policy's KL divergence from it and top-1 agreement, per token and on average");
  sub->add_option("--json", o->json_out, "Write results and per-token NLL as JSON");
  sub->add_option("--csv", o->csv_out,
                  "Write per-token NLL as CSV (a column per policy; with --reference also "
                  "kl:<policy> and top1:<policy>)");
  sub->add_option("--plot", o->plot_out, "Draw perplexity against tokens into a PNG");
  sub->add_option("--title", o->title, "Plot title");
  return [o] { return run_ppl(*o); };
});

}  // namespace
}  // namespace spillway::cli
