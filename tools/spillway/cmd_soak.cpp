// spillway soak: decodes a long stream (default one million tokens) through a bounded
// cache policy one token at a time, the decode path a long-running service takes
// (SoakRun, session/soak.h), prints each checkpoint and keeps the logs, and ends with the
// library's verdict (analysis/soak.h) on the goals of a stream that can run forever: no
// NaN or inf in any logit; after the warm-up, growth of the anonymous RSS below 1 MB,
// constant KV bytes, and no slowdown beyond 5 % in the CPU time per token, judged by the
// straight-line trend of the interval medians and its 95 % interval (a trend whose
// interval straddles +5 % is "not judged"; a faster end does not fail). A run with fewer
// than 3 intervals past the warm-up is "not judged" unless a logit was not finite. CPU
// time rather than wall time, because a process sharing the host lengthens a token's wall
// time without the decoder doing more; the anonymous RSS, because the model's mapped file
// pages come and go with the page cache. Logs written before those columns existed are
// judged on wall time and the whole RSS.
//
// With --state FILE the soak saves itself at every checkpoint (each session's cache and
// policy state, Session::save_state, with the soak's own counters and logs), written whole
// or not at all; started again with the same FILE it goes on from the last checkpoint as
// one stream: the same tokens, the same logits, the intervals and the NLL carried on. Each
// process is a segment; RSS is judged within each segment, against its own first judged
// checkpoint (a new process has its own baseline), latency over the whole stream.
//
// With --streams N (N > 1) the soak decodes N streams together through one BatchDecoder (the
// path of `spillway serve`): every step gives each stream one token; latency is per step,
// tokens/s counts every stream's tokens, NLL and the non-finite count cover every stream,
// KV bytes are all sessions'. Stream i starts i/N of the way into the corpus.
//
// The stream is the corpus's token ids (the whole file encoded once, as the tokenizer
// encodes a document: with BOS first if the model's metadata adds one) repeated back to
// back, so every repetition begins exactly as the first did.
#include <fmt/format.h>
#include <malloc.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "command.h"
#include "spillway/analysis/soak.h"
#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/core/process.h"
#include "spillway/core/serial.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/ops/matmul.h"
#include "spillway/session/soak.h"
#include "util.h"

namespace spillway::cli {
namespace {

struct SoakCliOptions {
  std::string model = kDefaultModel;
  std::string policy = "sink:4+1020";
  std::string text = "data/austen.txt";
  int64_t tokens = 1'000'000;  // stream length
  int64_t every = 10'000;      // tokens per checkpoint
  int64_t warmup = 10'000;     // tokens before the baseline interval starts
  int threads = 0;
  int64_t streams = 1;       // decoded together (BatchDecoder) when more than 1
  double max_seconds = 0.0;  // stop at the first checkpoint past this (0: no limit)
  std::string csv;           // per-checkpoint rows
  std::string json;          // JSON lines: one per checkpoint, then the summary
  std::string state;         // save here at every checkpoint; resume from it when present
};

using Checkpoint = analysis::SoakCheckpoint;

nlohmann::ordered_json to_json(const Checkpoint& c) {
  nlohmann::ordered_json j;
  j["tokens"] = c.tokens;
  j["seconds"] = c.seconds;
  j["tokens_per_s"] = c.tokens_per_s;
  j["latency_ms_median"] = c.latency_ms_median;
  j["latency_ms_p99"] = c.latency_ms_p99;
  j["latency_ms_max"] = c.latency_ms_max;
  j["cpu_ms_median"] = c.cpu_ms_median;
  j["rss_bytes"] = c.rss_bytes;
  j["rss_anon_bytes"] = c.rss_anon_bytes;
  j["kv_bytes"] = c.kv_bytes;
  j["nonfinite_logits"] = c.nonfinite;
  j["nll_interval"] = c.nll_interval;
  j["nll_running"] = c.nll_running;
  j["nll_tokens"] = c.nll_tokens;
  j["segment"] = c.segment;
  return j;
}

Checkpoint checkpoint_from_json(const nlohmann::ordered_json& j) {
  Checkpoint c;
  c.tokens = j.at("tokens").get<int64_t>();
  c.seconds = j.at("seconds").get<double>();
  c.tokens_per_s = j.at("tokens_per_s").get<double>();
  c.latency_ms_median = j.at("latency_ms_median").get<double>();
  c.latency_ms_p99 = j.at("latency_ms_p99").get<double>();
  c.latency_ms_max = j.at("latency_ms_max").get<double>();
  c.rss_bytes = j.at("rss_bytes").get<uint64_t>();
  // Absent from checkpoints saved before the columns existed: unknown.
  c.cpu_ms_median = j.value("cpu_ms_median", -1.0);
  c.rss_anon_bytes = j.value("rss_anon_bytes", uint64_t{0});
  c.kv_bytes = j.at("kv_bytes").get<uint64_t>();
  c.nonfinite = j.at("nonfinite_logits").get<int64_t>();
  c.nll_interval = j.at("nll_interval").get<double>();
  c.nll_running = j.at("nll_running").get<double>();
  c.nll_tokens = j.at("nll_tokens").get<int64_t>();
  c.segment = j.at("segment").get<int64_t>();
  return c;
}

// The --state file: a header line, the soak's progress as JSON (its length first, 8 bytes),
// then the session's state (which carries its own checksum).
constexpr std::string_view kSoakStateMagic = "spillway-soak-state 1\n";

// The file's head: the header line and the progress (the session's bytes follow it).
std::string soak_state_head(const nlohmann::ordered_json& progress) {
  const std::string text = progress.dump();
  std::string out(kSoakStateMagic);
  ByteWriter w(out);
  w.put_string(text);
  return out;
}

// Splits a --state file into its progress and the session's bytes (FormatError naming the
// file for anything else).
nlohmann::ordered_json unpack_soak_state(const std::string& data, const std::string& path,
                                         std::string_view* session) {
  if (data.substr(0, kSoakStateMagic.size()) != kSoakStateMagic)
    throw FormatError(fmt::format("{}: not a soak state (it should begin with \"{}\")", path,
                                  kSoakStateMagic.substr(0, kSoakStateMagic.size() - 1)));
  ByteReader r(std::string_view(data).substr(kSoakStateMagic.size()), path);
  const std::string text = r.get_string("soak progress", 1 << 30);
  *session = std::string_view(data).substr(kSoakStateMagic.size() + r.offset());
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: the soak progress is not JSON: {}", path, e.what()));
  }
}

constexpr const char* kCsvHeader =
    "tokens,seconds,tokens_per_s,latency_ms_median,latency_ms_p99,latency_ms_max,rss_bytes,"
    "kv_bytes,nonfinite_logits,nll_interval,nll_running,cpu_ms_median,rss_anon_bytes";

// An unknown figure (a checkpoint of an older log) is an empty field.
std::string to_csv(const Checkpoint& c) {
  return fmt::format("{},{:.3f},{:.3f},{:.4f},{:.4f},{:.4f},{},{},{},{:.6f},{:.6f},{},{}", c.tokens,
                     c.seconds, c.tokens_per_s, c.latency_ms_median, c.latency_ms_p99,
                     c.latency_ms_max, c.rss_bytes, c.kv_bytes, c.nonfinite, c.nll_interval,
                     c.nll_running,
                     c.cpu_ms_median >= 0 ? fmt::format("{:.4f}", c.cpu_ms_median) : "",
                     c.rss_anon_bytes > 0 ? fmt::to_string(c.rss_anon_bytes) : "");
}

// The CSV log of the checkpoints so far, header first.
std::string csv_of(const std::vector<Checkpoint>& checkpoints) {
  std::string out = std::string(kCsvHeader) + "\n";
  for (const Checkpoint& c : checkpoints) out += to_csv(c) + "\n";
  return out;
}

// The CLI's side of a soak (the progress is SoakRun's): the logs and segments it writes.
struct SoakLogs {
  nlohmann::ordered_json segments = nlohmann::ordered_json::array();
  std::string csv, jsonl;  // the logs as written so far
};

// What a saved soak must agree on with the one that goes on from it.
nlohmann::ordered_json soak_identity(const SoakCliOptions& o, const kv::PolicySpec& policy) {
  return {{"model", o.model}, {"policy", policy.str()}, {"text", o.text},
          {"every", o.every}, {"warmup", o.warmup},     {"streams", o.streams}};
}

// Writes the soak and its sessions to o.state, whole or not at all.
void save_soak(const SoakCliOptions& o, const kv::PolicySpec& policy, const SoakRun& run,
               const SoakLogs& logs) {
  const SoakProgress& p = run.progress();
  nlohmann::ordered_json j = soak_identity(o, policy);
  j["corpus_tokens"] = run.corpus_tokens();
  j["tokens"] = p.tokens;
  j["seconds"] = p.seconds;
  j["nonfinite_logits"] = p.nonfinite;
  j["nll_sum"] = p.nll_sum;
  j["nll_count"] = p.nll_count;
  j["checkpoints"] = nlohmann::ordered_json::array();
  for (const Checkpoint& k : p.checkpoints) j["checkpoints"].push_back(to_json(k));
  j["segments"] = logs.segments;
  j["jsonl"] = logs.jsonl;
  const std::vector<std::string> states = run.save_states();
  j["session_bytes"] = nlohmann::ordered_json::array();
  for (const std::string& st : states) j["session_bytes"].push_back(st.size());
  const std::string head = soak_state_head(j);
  std::vector<std::string_view> parts = {head};
  for (const std::string& st : states) parts.push_back(st);
  write_file_atomic(o.state, parts);
}

// A saved soak read before the model loads, so that other options are a usage error.
struct SavedSoak {
  std::string data;  // the whole file
  std::string_view sessions;
  nlohmann::ordered_json progress;
};

SavedSoak read_saved_soak(const SoakCliOptions& o, const kv::PolicySpec& policy) {
  SavedSoak saved;
  saved.data = read_file(o.state);
  saved.progress = unpack_soak_state(saved.data, o.state, &saved.sessions);
  // Soaks saved before --streams existed ran one stream and did not record it, and hold
  // that session's state alone after their progress.
  if (!saved.progress.contains("streams")) {
    saved.progress["streams"] = 1;
    if (!saved.progress.contains("session_bytes"))
      saved.progress["session_bytes"] = std::vector<uint64_t>{saved.sessions.size()};
  }
  const nlohmann::ordered_json identity = soak_identity(o, policy);
  for (const auto& [key, mine] : identity.items()) {
    const auto it = saved.progress.find(key);
    if (it == saved.progress.end() || *it != mine)
      throw InvalidArgument(fmt::format(
          "--state {}: saved by a soak with --{} {}, this one has {}: give the same options to "
          "go on, or another --state file to start over",
          o.state, key, it == saved.progress.end() ? "(none)" : it->dump(), mine.dump()));
  }
  return saved;
}

// Resumes `run` from a saved soak and returns its logs (FormatError naming the file for
// anything that does not fit).
SoakLogs resume_soak(const SoakCliOptions& o, const SavedSoak& saved, SoakRun& run) {
  SoakLogs logs;
  SoakProgress p;
  const nlohmann::ordered_json& j = saved.progress;
  std::vector<uint64_t> sizes;
  try {
    if (j.at("corpus_tokens").get<int64_t>() != run.corpus_tokens())
      throw InvalidArgument(fmt::format(
          "--state {}: the corpus encoded to {} tokens when it was saved, {} now: {} changed",
          o.state, j.at("corpus_tokens").get<int64_t>(), run.corpus_tokens(), o.text));
    p.tokens = j.at("tokens").get<int64_t>();
    p.seconds = j.at("seconds").get<double>();
    p.nonfinite = j.at("nonfinite_logits").get<int64_t>();
    p.nll_sum = j.at("nll_sum").get<double>();
    p.nll_count = j.at("nll_count").get<int64_t>();
    for (const auto& k : j.at("checkpoints")) p.checkpoints.push_back(checkpoint_from_json(k));
    for (const auto& k : j.at("segments")) logs.segments.push_back(k);
    logs.jsonl = j.at("jsonl").get<std::string>();
    sizes = j.at("session_bytes").get<std::vector<uint64_t>>();
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: the soak progress lacks a field: {}", o.state, e.what()));
  }
  if (p.checkpoints.empty() || p.checkpoints.back().tokens != p.tokens)
    throw FormatError(
        fmt::format("{}: the soak is at token {} without a checkpoint there", o.state, p.tokens));
  // Rewritten from the checkpoints rather than read back, so that a log begun by an older
  // binary takes this one's columns.
  logs.csv = csv_of(p.checkpoints);
  std::vector<std::string_view> states;
  std::string_view bytes = saved.sessions;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > bytes.size())
      throw FormatError(fmt::format("{}: truncated: stream {}'s state needs {} bytes, {} left",
                                    o.state, i, sizes[i], bytes.size()));
    states.push_back(bytes.substr(0, sizes[i]));
    bytes.remove_prefix(sizes[i]);
  }
  if (!bytes.empty())
    throw FormatError(fmt::format("{}: {} bytes after the sessions", o.state, bytes.size()));
  run.resume(std::move(p), states, o.state);
  return logs;
}

// Judges the soak (analysis::judge_soak), prints the summary and ends the JSON log with it.
void report_soak(const SoakCliOptions& o, const SoakRun& run, bool stopped_early, SoakLogs& logs) {
  const SoakProgress& p = run.progress();
  const int64_t n = p.tokens;
  analysis::SoakCriteria criteria;
  criteria.every = o.every;
  criteria.warmup = o.warmup;
  const analysis::SoakJudgement jd = analysis::judge_soak(p.checkpoints, criteria);
  const Checkpoint& last = p.checkpoints.back();
  nlohmann::ordered_json s;
  s["summary"] = true;
  s["model"] = o.model;
  s["kernel_isa"] = ops::kernel_isa();
  s["threads"] = o.threads;
  s["streams"] = o.streams;
  s["policy"] = run.session(0).policy().spec();
  s["text"] = o.text;
  s["corpus_tokens"] = run.corpus_tokens();
  s["tokens_requested"] = o.tokens;
  s["tokens"] = n;
  s["stopped_early"] = stopped_early;
  s["segments"] = logs.segments;
  s["seconds"] = last.seconds;
  s["every"] = o.every;
  s["warmup"] = o.warmup;
  s["nonfinite_logits"] = last.nonfinite;
  s["nll_mean"] = last.nll_running;
  s["peak_rss_bytes"] = peak_resident_bytes();
  s["kv_bytes_peak"] = run.kv_bytes_peak();
  fmt::print("\nsummary  {} of {} tokens in {:.1f} s{}\n", n, o.tokens, last.seconds,
             stopped_early ? fmt::format(" (stopped by --max-seconds {:g})", o.max_seconds) : "");
  fmt::print("  non-finite logits        {} ({})\n", last.nonfinite, jd.finite_ok ? "ok" : "FAIL");
  fmt::print("  mean NLL                 {:.4f} over {} predictions\n", last.nll_running,
             last.nll_tokens);
  s["judged_intervals"] = jd.judged_intervals;
  if (!jd.judged) {
    s["baseline_tokens"] = nullptr;
    s["latency_verdict"] = "not judged";
    fmt::print(
        "  latency, RSS, KV         not judged: {} interval(s) after the warm-up of {} tokens, "
        "a trend needs {}\n",
        jd.judged_intervals, o.warmup, criteria.min_intervals);
  } else {
    const Checkpoint& base = *jd.baseline;
    s["baseline_tokens"] = base.tokens;
    s["latency_ms_median_baseline"] = base.latency_ms_median;
    s["latency_ms_median_end"] = last.latency_ms_median;
    s["latency_judged_on"] = jd.latency_on_cpu ? "cpu_ms_median" : "latency_ms_median";
    if (jd.latency_on_cpu) {
      s["cpu_ms_median_baseline"] = base.cpu_ms_median;
      s["cpu_ms_median_end"] = last.cpu_ms_median;
    }
    s["latency_drift"] = jd.drift;
    s["latency_drift_low"] = jd.drift_low;
    s["latency_drift_high"] = jd.drift_high;
    s["latency_verdict"] = jd.latency == analysis::SoakVerdict::kPass
                               ? std::string("ok")
                               : std::string(analysis::to_string(jd.latency));
    s["rss_judged_on"] = jd.rss_anonymous ? "rss_anon_bytes" : "rss_bytes";
    s["rss_bytes_baseline"] = jd.rss_from->rss_bytes;
    s["rss_bytes_end"] = jd.rss_to->rss_bytes;
    if (jd.rss_anonymous) {
      s["rss_anon_bytes_baseline"] = jd.rss_from->rss_anon_bytes;
      s["rss_anon_bytes_end"] = jd.rss_to->rss_anon_bytes;
    }
    s["rss_growth_bytes"] = jd.rss_growth;
    s["rss_ok"] = jd.rss_ok;
    s["kv_bytes_baseline"] = base.kv_bytes;
    s["kv_bytes_end"] = last.kv_bytes;
    s["kv_ok"] = jd.kv_ok;
    fmt::print(
        "  {:<24} {:+.2f} % from {} to {} tokens (95 % interval {:+.2f} .. "
        "{:+.2f} %, {} intervals; median {:.3f} -> {:.3f} ms): {}\n",
        jd.latency_on_cpu ? "CPU time trend" : "latency trend", 100 * jd.drift, base.tokens,
        last.tokens, 100 * jd.drift_low, 100 * jd.drift_high, jd.judged_intervals,
        jd.latency_on_cpu ? base.cpu_ms_median : base.latency_ms_median,
        jd.latency_on_cpu ? last.cpu_ms_median : last.latency_ms_median,
        jd.latency == analysis::SoakVerdict::kPass   ? "ok, no slowdown beyond 5 %"
        : jd.latency == analysis::SoakVerdict::kFail ? "FAIL, slower by more than 5 %"
                                                     : "not judged, the host's noise is wider "
                                                       "than the 5 % criterion");
    const auto rss_of = [&](const Checkpoint& k) {
      return human_bytes(jd.rss_anonymous ? k.rss_anon_bytes : k.rss_bytes);
    };
    fmt::print("  {:<24} {} at {} -> {} at {}: {:+} bytes ({}){}\n",
               jd.rss_anonymous ? "RSS, anonymous" : "RSS", rss_of(*jd.rss_from),
               jd.rss_from->tokens, rss_of(*jd.rss_to), jd.rss_to->tokens, jd.rss_growth,
               jd.rss_ok ? "ok, < 1 MB" : "FAIL, >= 1 MB",
               jd.segments > 1
                   ? fmt::format(" (the largest growth within one of {} segments)", jd.segments)
                   : "");
    fmt::print("  KV bytes                 {} -> {} ({})\n", base.kv_bytes, last.kv_bytes,
               jd.kv_ok ? "ok, constant" : "FAIL, changed");
  }
  const std::string verdict(analysis::to_string(jd.verdict));
  s["verdict"] = verdict;
  fmt::print("  verdict                  {}\n", verdict == "fail" ? "FAIL" : verdict);
  if (!o.json.empty()) write_file_atomic(o.json, logs.jsonl += s.dump() + "\n");
}

int run_soak(const SoakCliOptions& o) {
  if (o.tokens < 2)
    throw InvalidArgument(fmt::format("--tokens must be at least 2, got {}", o.tokens));
  if (o.streams < 1 || o.streams > 256)
    throw InvalidArgument(fmt::format("--streams must be in 1..256, got {}", o.streams));
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

  // Allocations of 1 MiB and more are mapped and unmapped, never kept by the allocator:
  // glibc otherwise raises its threshold to the size of the last block freed, so that the
  // state saved at every checkpoint (--state: megabytes per stream) would come from the heap
  // and stay in RSS, which is what this soak watches for leaks.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);

  // A saved soak to go on from: the same stream, or an error naming what differs.
  const bool resuming = !o.state.empty() && std::filesystem::exists(o.state);
  std::optional<SavedSoak> saved;
  if (resuming) saved = read_saved_soak(o, policy);

  auto model = model::Model::load(o.model);
  const auto& cfg = model->config();
  const std::string text = read_file(o.text);
  std::vector<TokenId> corpus = model->tokenizer().encode(text);
  if (corpus.size() < 2)
    throw InvalidArgument(fmt::format("{}: fewer than 2 tokens, nothing to stream", o.text));
  const auto n_corpus = static_cast<int64_t>(corpus.size());
  const bool bos_first = corpus.front() == model->tokenizer().bos();

  ThreadPool pool(o.threads);
  SoakOptions so;
  so.policy = policy;
  so.streams = o.streams;
  so.every = o.every;
  SoakRun run(*model, std::move(corpus), so, &pool);

  // The logs grow by a line a checkpoint, each time rewritten whole (write_file_atomic): a
  // soak killed at any moment leaves complete lines only. A resumed soak goes on from the
  // logs of its last checkpoint.
  SoakLogs logs;
  if (resuming) {
    logs = resume_soak(o, *saved, run);
    // Destroyed, not assigned an empty one: a string assigned an empty string keeps its
    // buffer, and this one holds the whole state file.
    saved.reset();
  } else {
    logs.csv = csv_of({});
  }
  if (!o.csv.empty()) write_file_atomic(o.csv, logs.csv);
  if (!o.json.empty()) write_file_atomic(o.json, logs.jsonl);
  const int64_t segment = run.segment();
  const double seconds_before = run.progress().seconds;  // stream time of the earlier segments
  logs.segments.push_back({{"segment", segment},
                           {"from_tokens", run.progress().tokens},
                           {"kernel_isa", ops::kernel_isa()},
                           {"threads", o.threads}});

  fmt::print("model    {} ({}), kernels {}\n", o.model, cfg.name.empty() ? "unnamed" : cfg.name,
             ops::kernel_isa());
  fmt::print("policy   {} (capacity {}), {} token(s) one at a time, checkpoint every {}\n",
             run.session(0).policy().spec(), *run.session(0).policy().capacity(), o.tokens,
             o.every);
  if (o.streams > 1)
    fmt::print(
        "streams  {} decoded together (one BatchDecoder step gives each a token; tokens "
        "and checkpoints count per stream, tok/s all streams)\n",
        o.streams);
  fmt::print("stream   {} ({} tokens, {} BOS) repeated back to back ({:.2f} times)\n\n", o.text,
             n_corpus, bos_first ? "begins with" : "no",
             static_cast<double>(o.tokens) / static_cast<double>(n_corpus));
  fmt::print("{:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>6} {:>8} {:>8}\n", "tokens",
             "seconds", "tok/s", "med ms", "p99 ms", "cpu ms", "RSS", "KV", "nonfin", "NLL int",
             "NLL all");
  if (resuming)
    fmt::print("resumed  at token {} from {} (segment {}, {:.1f} s of stream before)\n",
               run.progress().tokens, o.state, segment, seconds_before);
  std::fflush(stdout);

  bool stopped_early = false;
  while (run.progress().tokens < o.tokens) {
    const Checkpoint& c = run.run_interval(o.tokens);
    logs.csv += to_csv(c) + "\n";
    logs.jsonl += to_json(c).dump() + "\n";
    if (!o.csv.empty()) write_file_atomic(o.csv, logs.csv);
    if (!o.json.empty()) write_file_atomic(o.json, logs.jsonl);
    if (!o.state.empty()) save_soak(o, policy, run, logs);
    fmt::print(
        "{:>10} {:>9.1f} {:>9.1f} {:>9.3f} {:>9.3f} {:>9.3f} {:>11} {:>10} {:>6} {:>8.4f} "
        "{:>8.4f}\n",
        c.tokens, c.seconds, c.tokens_per_s, c.latency_ms_median, c.latency_ms_p99, c.cpu_ms_median,
        human_bytes(c.rss_bytes), human_bytes(c.kv_bytes), c.nonfinite, c.nll_interval,
        c.nll_running);
    std::fflush(stdout);
    if (o.max_seconds > 0 && c.seconds - seconds_before >= o.max_seconds && c.tokens < o.tokens) {
      stopped_early = true;
      break;
    }
  }
  report_soak(o, run, stopped_early, logs);
  return 0;
}

Registrar reg("soak", [](CLI::App& app) {
  auto o = std::make_shared<SoakCliOptions>();
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
  sub->add_option("--streams", o->streams,
                  "Streams decoded together through one batched decoder (each a token per step; "
                  "stream i starts i/N into the corpus)")
      ->capture_default_str();
  sub->add_option("--max-seconds", o->max_seconds,
                  "Stop at the first checkpoint past this many seconds and judge what ran "
                  "(0: no limit)");
  sub->add_option("--csv", o->csv, "Write one CSV row per checkpoint to this file");
  sub->add_option("--state", o->state,
                  "Save the soak here at every checkpoint (session, counters, logs; written "
                  "whole); when the file exists, go on from it as one stream");
  sub->add_option("--json", o->json,
                  "Write JSON lines to this file: one object per checkpoint, then the summary");
  return [o] { return run_soak(*o); };
});

}  // namespace
}  // namespace spillway::cli
