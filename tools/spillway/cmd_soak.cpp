// spillway soak: decodes a long stream (default one million tokens) through a bounded
// cache policy one token at a time, the decode path a long-running service takes, and
// records at every checkpoint what would show a leak or a slowdown: tokens/s over the
// interval, per-token latency (median, p99), resident memory, KV bytes, non-finite
// logits and the running NLL of the next token. Ends with a verdict on the goals of a
// stream that can run forever: latency at the end at most 5 % above latency after warm-up
// (a slowdown fails; a faster end, e.g. a host grown quieter, does not),
// RSS growth below 1 MB after warm-up, no NaN or inf in any logit.
//
// The stream is the corpus's token ids (the whole file encoded once, as the tokenizer
// encodes a document: with BOS first if the model's metadata adds one) repeated back to
// back, so every repetition begins exactly as the first did.
#include <fmt/format.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/core/process.h"
#include "spillway/core/stats.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/ops/matmul.h"
#include "spillway/session/session.h"
#include "util.h"

namespace spillway::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct SoakOptions {
  std::string model = kDefaultModel;
  std::string policy = "sink:4+1020";
  std::string text = "data/austen.txt";
  int64_t tokens = 1'000'000;  // stream length
  int64_t every = 10'000;      // tokens per checkpoint
  int64_t warmup = 10'000;     // tokens before the baseline interval starts
  int threads = 0;
  double max_seconds = 0.0;  // stop at the first checkpoint past this (0: no limit)
  std::string csv;           // per-checkpoint rows
  std::string json;          // JSON lines: one per checkpoint, then the summary
};

struct Checkpoint {
  int64_t tokens = 0;              // stream tokens decoded so far
  double seconds = 0.0;            // wall time since the first token
  double tokens_per_s = 0.0;       // over the interval
  double latency_ms_median = 0.0;  // per token, over the interval
  double latency_ms_p99 = 0.0;
  double latency_ms_max = 0.0;
  uint64_t rss_bytes = 0;
  uint64_t kv_bytes = 0;
  int64_t nonfinite = 0;      // non-finite logits so far (all tokens, all vocab entries)
  double nll_interval = 0.0;  // mean NLL of the next token over the interval
  double nll_running = 0.0;   // mean NLL over the whole stream so far
  int64_t nll_tokens = 0;     // predictions scored so far
};

nlohmann::ordered_json to_json(const Checkpoint& c) {
  nlohmann::ordered_json j;
  j["tokens"] = c.tokens;
  j["seconds"] = c.seconds;
  j["tokens_per_s"] = c.tokens_per_s;
  j["latency_ms_median"] = c.latency_ms_median;
  j["latency_ms_p99"] = c.latency_ms_p99;
  j["latency_ms_max"] = c.latency_ms_max;
  j["rss_bytes"] = c.rss_bytes;
  j["kv_bytes"] = c.kv_bytes;
  j["nonfinite_logits"] = c.nonfinite;
  j["nll_interval"] = c.nll_interval;
  j["nll_running"] = c.nll_running;
  return j;
}

constexpr const char* kCsvHeader =
    "tokens,seconds,tokens_per_s,latency_ms_median,latency_ms_p99,latency_ms_max,rss_bytes,"
    "kv_bytes,nonfinite_logits,nll_interval,nll_running";

std::string to_csv(const Checkpoint& c) {
  return fmt::format("{},{:.3f},{:.3f},{:.4f},{:.4f},{:.4f},{},{},{},{:.6f},{:.6f}", c.tokens,
                     c.seconds, c.tokens_per_s, c.latency_ms_median, c.latency_ms_p99,
                     c.latency_ms_max, c.rss_bytes, c.kv_bytes, c.nonfinite, c.nll_interval,
                     c.nll_running);
}

// NLL of `target` under `logits` ([n]), in double; counts non-finite entries.
double nll_of(const float* logits, int64_t n, TokenId target, int64_t* nonfinite) {
  float mx = -std::numeric_limits<float>::infinity();
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = logits[i];
    if (!std::isfinite(v)) {
      ++bad;
      continue;
    }
    mx = std::max(mx, v);
  }
  *nonfinite += bad;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(logits[i])) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return std::log(sum) + mx - static_cast<double>(logits[target]);
}

int run_soak(const SoakOptions& o) {
  if (o.tokens < 2)
    throw InvalidArgument(fmt::format("--tokens must be at least 2, got {}", o.tokens));
  if (o.every < 1)
    throw InvalidArgument(fmt::format("--every must be at least 1, got {}", o.every));
  if (o.warmup < 0) throw InvalidArgument(fmt::format("--warmup must be >= 0, got {}", o.warmup));
  if (o.max_seconds < 0)
    throw InvalidArgument(fmt::format("--max-seconds must be >= 0, got {}", o.max_seconds));
  const kv::PolicySpec policy(o.policy);  // a usage error before the model loads
  {
    auto probe = kv::make_policy(policy, kv::PolicyLimits{1, 0});
    if (!probe->capacity())
      throw InvalidArgument(
          fmt::format("--policy {}: a soak needs a bounded cache (this one grows with the stream)",
                      policy.str()));
  }

  // The logs grow by a line a checkpoint, each time rewritten whole (write_file_atomic): a
  // soak killed at any moment leaves complete lines only.
  std::string csv, jsonl;
  if (!o.csv.empty()) {
    csv = std::string(kCsvHeader) + "\n";
    write_file_atomic(o.csv, csv);
  }
  if (!o.json.empty()) write_file_atomic(o.json, jsonl);

  auto model = model::Model::load(o.model);
  const auto& cfg = model->config();
  const std::string text = read_text_file(o.text);
  const std::vector<TokenId> corpus = model->tokenizer().encode(text);
  if (corpus.size() < 2)
    throw InvalidArgument(fmt::format("{}: fewer than 2 tokens, nothing to stream", o.text));
  const auto n_corpus = static_cast<int64_t>(corpus.size());
  auto token_at = [&](int64_t n) { return corpus[static_cast<size_t>(n % n_corpus)]; };

  SessionOptions so;
  so.policy = policy;
  so.max_batch = 1;  // the decode path: one token per forward pass, storage exactly S+W
  so.threads = o.threads;
  Session session(*model, so);

  fmt::print("model    {} ({}), kernels {}\n", o.model, cfg.name.empty() ? "unnamed" : cfg.name,
             ops::kernel_isa());
  fmt::print("policy   {} (capacity {}), {} token(s) one at a time, checkpoint every {}\n",
             session.policy().spec(), *session.policy().capacity(), o.tokens, o.every);
  fmt::print("stream   {} ({} tokens, {} BOS) repeated back to back ({:.2f} times)\n\n", o.text,
             n_corpus, corpus.front() == model->tokenizer().bos() ? "begins with" : "no",
             static_cast<double>(o.tokens) / static_cast<double>(n_corpus));
  fmt::print("{:>10} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>6} {:>8} {:>8}\n", "tokens",
             "seconds", "tok/s", "med ms", "p99 ms", "RSS", "KV", "nonfin", "NLL int", "NLL all");
  std::fflush(stdout);

  std::vector<double> lat;  // [every] ms per token of the current interval
  lat.reserve(static_cast<size_t>(o.every));
  std::vector<Checkpoint> checkpoints;
  int64_t nonfinite = 0;
  double nll_sum = 0.0, nll_interval_sum = 0.0;
  int64_t nll_count = 0, nll_interval_count = 0;
  const auto t0 = Clock::now();
  auto t_interval = t0;
  bool stopped_early = false;

  int64_t n = 0;
  for (; n < o.tokens; ++n) {
    const TokenId t = token_at(n);
    const auto ts = Clock::now();
    session.feed(std::span<const TokenId>(&t, 1));
    const auto te = Clock::now();
    lat.push_back(std::chrono::duration<double, std::milli>(te - ts).count());
    // The logits of token n predict token n + 1 (scored while the stream goes on).
    if (n + 1 < o.tokens) {
      const double nll = nll_of(session.last_logits(), cfg.n_vocab, token_at(n + 1), &nonfinite);
      nll_sum += nll;
      nll_interval_sum += nll;
      ++nll_count;
      ++nll_interval_count;
    }
    if ((n + 1) % o.every == 0 || n + 1 == o.tokens) {
      Checkpoint c;
      c.tokens = n + 1;
      c.seconds = std::chrono::duration<double>(te - t0).count();
      c.tokens_per_s =
          static_cast<double>(lat.size()) / std::chrono::duration<double>(te - t_interval).count();
      c.latency_ms_median = stats::median(lat);
      c.latency_ms_p99 = stats::percentile(lat, 99.0);
      c.latency_ms_max = *std::max_element(lat.begin(), lat.end());
      c.rss_bytes = resident_bytes();
      c.kv_bytes = session.storage().bytes();
      c.nonfinite = nonfinite;
      c.nll_interval = nll_interval_count ? nll_interval_sum / nll_interval_count : 0.0;
      c.nll_running = nll_count ? nll_sum / nll_count : 0.0;
      c.nll_tokens = nll_count;
      checkpoints.push_back(c);
      if (!o.csv.empty()) write_file_atomic(o.csv, csv += to_csv(c) + "\n");
      if (!o.json.empty()) write_file_atomic(o.json, jsonl += to_json(c).dump() + "\n");
      fmt::print(
          "{:>10} {:>9.1f} {:>9.1f} {:>9.3f} {:>9.3f} {:>11} {:>10} {:>6} {:>8.4f} {:>8.4f}\n",
          c.tokens, c.seconds, c.tokens_per_s, c.latency_ms_median, c.latency_ms_p99,
          human_bytes(c.rss_bytes), human_bytes(c.kv_bytes), c.nonfinite, c.nll_interval,
          c.nll_running);
      std::fflush(stdout);
      lat.clear();
      nll_interval_sum = 0.0;
      nll_interval_count = 0;
      t_interval = Clock::now();
      if (o.max_seconds > 0 && c.seconds >= o.max_seconds && n + 1 < o.tokens) {
        stopped_early = true;
        ++n;
        break;
      }
    }
  }

  // Baseline: the first checkpoint whose whole interval lies past the warm-up.
  const Checkpoint* base = nullptr;
  for (const Checkpoint& c : checkpoints)
    if (c.tokens - o.every >= o.warmup) {
      base = &c;
      break;
    }
  const Checkpoint& last = checkpoints.back();
  nlohmann::ordered_json s;
  s["summary"] = true;
  s["model"] = o.model;
  s["kernel_isa"] = ops::kernel_isa();
  s["threads"] = o.threads;
  s["policy"] = session.policy().spec();
  s["text"] = o.text;
  s["corpus_tokens"] = n_corpus;
  s["tokens_requested"] = o.tokens;
  s["tokens"] = n;
  s["stopped_early"] = stopped_early;
  s["seconds"] = last.seconds;
  s["every"] = o.every;
  s["warmup"] = o.warmup;
  s["nonfinite_logits"] = last.nonfinite;
  s["nll_mean"] = last.nll_running;
  s["peak_rss_bytes"] = peak_resident_bytes();
  s["kv_bytes_peak"] = session.kv_bytes_peak();
  bool ok = last.nonfinite == 0;
  fmt::print("\nsummary  {} of {} tokens in {:.1f} s{}\n", n, o.tokens, last.seconds,
             stopped_early ? fmt::format(" (stopped by --max-seconds {:g})", o.max_seconds) : "");
  fmt::print("  non-finite logits        {} ({})\n", last.nonfinite,
             last.nonfinite == 0 ? "ok" : "FAIL");
  fmt::print("  mean NLL                 {:.4f} over {} predictions\n", last.nll_running,
             last.nll_tokens);
  if (base && base != &last) {
    const double lat_ratio = last.latency_ms_median / base->latency_ms_median;
    const auto rss_growth =
        static_cast<int64_t>(last.rss_bytes) - static_cast<int64_t>(base->rss_bytes);
    const bool lat_ok = lat_ratio <= 1.05;  // one-sided: only a slowdown fails
    const bool rss_ok = rss_growth < 1'000'000;
    const bool kv_ok = last.kv_bytes == base->kv_bytes;
    ok = ok && lat_ok && rss_ok && kv_ok;
    s["baseline_tokens"] = base->tokens;
    s["latency_ms_median_baseline"] = base->latency_ms_median;
    s["latency_ms_median_end"] = last.latency_ms_median;
    s["latency_ratio"] = lat_ratio;
    s["latency_ok"] = lat_ok;
    s["rss_bytes_baseline"] = base->rss_bytes;
    s["rss_bytes_end"] = last.rss_bytes;
    s["rss_growth_bytes"] = rss_growth;
    s["rss_ok"] = rss_ok;
    s["kv_bytes_baseline"] = base->kv_bytes;
    s["kv_bytes_end"] = last.kv_bytes;
    s["kv_ok"] = kv_ok;
    fmt::print("  latency median           {:.3f} ms at {} -> {:.3f} ms at {}: x{:.4f} ({})\n",
               base->latency_ms_median, base->tokens, last.latency_ms_median, last.tokens,
               lat_ratio, lat_ok ? "ok, at most 5 % slower" : "FAIL, more than 5 % slower");
    fmt::print("  RSS                      {} at {} -> {} at {}: {:+} bytes ({})\n",
               human_bytes(base->rss_bytes), base->tokens, human_bytes(last.rss_bytes), last.tokens,
               rss_growth, rss_ok ? "ok, < 1 MB" : "FAIL, >= 1 MB");
    fmt::print("  KV bytes                 {} -> {} ({})\n", base->kv_bytes, last.kv_bytes,
               kv_ok ? "ok, constant" : "FAIL, changed");
  } else {
    ok = false;
    s["baseline_tokens"] = nullptr;
    fmt::print(
        "  latency and RSS          not judged: no checkpoint after the warm-up of {} "
        "tokens and before the end\n",
        o.warmup);
  }
  s["verdict"] = ok ? "pass" : "fail";
  fmt::print("  verdict                  {}\n", ok ? "pass" : "FAIL");
  if (!o.json.empty()) write_file_atomic(o.json, jsonl += s.dump() + "\n");
  return 0;
}

Registrar reg("soak", [](CLI::App& app) {
  auto o = std::make_shared<SoakOptions>();
  auto* sub = app.add_subcommand(
      "soak",
      "Decode a long stream one token at a time; record latency, RSS, KV bytes, NaN/inf and "
      "NLL every --every tokens; judge latency and memory stay flat");
  sub->add_option("--model,-m", o->model, "GGUF model file")->capture_default_str();
  sub->add_option("--policy,-p", o->policy, "Cache policy (bounded): " + kv::policy_usage())
      ->capture_default_str();
  sub->add_option("--file,--text", o->text,
                  "Corpus: its token ids are repeated back to back to make the stream")
      ->capture_default_str();
  sub->add_option("--tokens,-n", o->tokens, "Stream length in tokens")->capture_default_str();
  sub->add_option("--every", o->every, "Tokens per checkpoint")->capture_default_str();
  sub->add_option("--warmup", o->warmup,
                  "Tokens before the baseline interval (latency and RSS are judged against the "
                  "first checkpoint whose interval starts past them)")
      ->capture_default_str();
  sub->add_option("--threads,-t", o->threads, "Threads (0: all cores)");
  sub->add_option("--max-seconds", o->max_seconds,
                  "Stop at the first checkpoint past this many seconds and judge what ran "
                  "(0: no limit)");
  sub->add_option("--csv", o->csv, "Write one CSV row per checkpoint to this file");
  sub->add_option("--json", o->json,
                  "Write JSON lines to this file: one object per checkpoint, then the summary");
  return [o] { return run_soak(*o); };
});

}  // namespace
}  // namespace spillway::cli
