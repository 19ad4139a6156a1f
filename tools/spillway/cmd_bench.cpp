// spillway bench: throughput and latency of the model on this machine, measured the way
// llama-bench measures (pp512: a 512-token prompt in one forward pass; tg128: 128 tokens
// decoded one at a time from an empty cache, each computing its logits), decoding with a
// full cache at depths D (sink:4+(D-4): the cache filled to D tokens by real forward
// passes, then tokens decoded one at a time, each evicting one; llama-bench's -d D with
// tg), decoding deep into a stream (position 16K) under a bounded cache policy, per-token
// latency percentiles, peak RSS and KV bytes, and, with --positions, decoding at stream
// positions as far as 10^9 under a policy that plans by position alone (the cache holds real
// sinks and a real window; the tokens between are skipped with Session::seek), so that the
// cost of a token at position 1,000,000 is measured beside its cost at 10,000. Every figure
// is the median over --reps repetitions.
//
// The decode tests also report their memory bound (session/memory_bound.h): the bytes a
// decoded token reads over the read bandwidth measured here, with the same threads, on a
// buffer of that working-set size (core/bandwidth.h).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/core/bandwidth.h"
#include "spillway/core/error.h"
#include "spillway/core/process.h"
#include "spillway/core/stats.h"
#include "spillway/kv/cache.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/ops/matmul.h"
#include "spillway/session/batch.h"
#include "spillway/session/generate.h"
#include "spillway/session/memory_bound.h"
#include "spillway/session/session.h"
#include "util.h"

namespace spillway::cli {
namespace {

using Clock = std::chrono::steady_clock;

// The sampler measured: settings people use for chat (temperature 0.7, top-p 0.9).
SamplerParams default_bench_sampling() {
  SamplerParams p;
  p.temperature = 0.7f;
  p.top_p = 0.9f;
  return p;
}

std::string describe(const SamplerParams& p) {
  std::string s = fmt::format("temp {:g}", p.temperature);
  if (p.top_k > 0) s += fmt::format(", top-k {}", p.top_k);
  if (p.top_p < 1.0f) s += fmt::format(", top-p {:g}", p.top_p);
  if (p.min_p > 0.0f) s += fmt::format(", min-p {:g}", p.min_p);
  if (p.repeat_penalty != 1.0f)
    s += fmt::format(", repeat {:g}/{}", p.repeat_penalty, p.repeat_last_n);
  return s;
}

struct BenchOptions {
  std::string model = kDefaultModel;
  std::string policy = "sink:4+1020";
  std::string text = "data/austen.txt";
  int threads = 0;
  int reps = 5;
  int64_t prompt = 512;          // pp tokens
  int64_t gen = 128;             // tg tokens
  int64_t stream = 16384;        // stream position of the deep decode (0: skip)
  int64_t stream_batch = 64;     // tokens per forward pass while advancing the stream
  std::vector<int64_t> streams;  // concurrent streams of the batched decode test (empty: skip)
  std::vector<int64_t> depths = {1024, 4096};  // cache depths of the full-cache decode tests
  std::vector<int64_t> positions;              // stream positions of the position test
  std::vector<std::string> kv = {"f16"};       // KV types of the full-cache decode tests
  bool json = false;
  SamplerParams sampling = default_bench_sampling();
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

using stats::median;
using stats::percentile;

// `count` token ids of real text (the start of `path`, its tokens repeated if the text is
// short), or a fixed pseudo-random sequence of ordinary tokens when the file is missing.
std::vector<TokenId> bench_tokens(const model::Model& model, const std::string& path, int64_t count,
                                  std::string* source) {
  std::vector<TokenId> out;
  out.reserve(static_cast<size_t>(count));
  if (!path.empty() && std::filesystem::exists(path)) {
    const std::string text = read_file(path);
    // About 4 bytes per token in English prose; take twice what should be enough.
    const size_t want = std::min(text.size(), static_cast<size_t>(count) * 8 + 1024);
    std::vector<TokenId> ids = model.tokenizer().encode(std::string_view(text).substr(0, want));
    if (!ids.empty()) {
      while (static_cast<int64_t>(out.size()) < count)
        for (size_t i = 0; i < ids.size() && static_cast<int64_t>(out.size()) < count; ++i)
          out.push_back(ids[i]);
      *source = fmt::format("{} (its first {} tokens{})", path,
                            std::min<int64_t>(static_cast<int64_t>(ids.size()), count),
                            static_cast<int64_t>(ids.size()) < count ? ", repeated" : "");
      return out;
    }
  }
  const int64_t n_vocab = model.config().n_vocab;
  for (int64_t i = 0; i < count; ++i)
    out.push_back(static_cast<TokenId>((1000 + i * 7919) % std::max<int64_t>(1, n_vocab - 1000)));
  *source = "a fixed token sequence";
  return out;
}

struct Series {
  std::vector<double> tokens_per_s;  // per repetition
  std::vector<double> latency_ms;    // per step, all repetitions (decode only)
};

// Decodes tokens one at a time (each step computes logits), appending step latencies.
double decode_steps(Session& s, std::span<const TokenId> tokens, Series& series) {
  const auto t0 = Clock::now();
  for (TokenId t : tokens) {
    const auto ts = Clock::now();
    s.feed(std::span<const TokenId>(&t, 1));
    series.latency_ms.push_back(seconds_since(ts) * 1e3);
  }
  return seconds_since(t0);
}

nlohmann::ordered_json series_json(const Series& s, bool latency) {
  nlohmann::ordered_json j;
  j["tokens_per_s"] = median(s.tokens_per_s);
  j["tokens_per_s_reps"] = s.tokens_per_s;
  if (latency) {
    j["latency_ms_median"] = median(s.latency_ms);
    j["latency_ms_p99"] = percentile(s.latency_ms, 99.0);
    j["latency_ms_max"] =
        s.latency_ms.empty() ? 0.0 : *std::max_element(s.latency_ms.begin(), s.latency_ms.end());
  }
  return j;
}

// "kv=f16": the KV type of a session's storage.
std::string kv_type_label(const Session& s) {
  std::string t(dtype_name(s.storage().type()));
  for (char& c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return "kv=" + t;
}

// ---- the memory bound of a decoded token (session/memory_bound.h) ----

// A decode test's bound: the bytes a token reads, and the read bandwidth of a buffer of
// that size probed right after each repetition.
struct Bound {
  MemoryBound bytes;
  std::vector<double> bandwidth;  // bytes/s, one probe per repetition
  double tokens_per_s() const { return bytes.tokens_per_s(median(bandwidth)); }
  // Each repetition's tokens/s over the bound of the probe taken right after it: the
  // host's bandwidth drifts (other tenants), and a pair sees the same moment of it.
  std::vector<double> fractions(const std::vector<double>& tokens_per_s) const {
    std::vector<double> f;
    for (size_t i = 0; i < tokens_per_s.size() && i < bandwidth.size(); ++i)
      f.push_back(bytes.fraction(tokens_per_s[i], bandwidth[i]));
    return f;
  }
  double fraction(const std::vector<double>& tokens_per_s) const {
    return median(fractions(tokens_per_s));
  }
};

nlohmann::ordered_json bound_json(const Bound& b, const std::vector<double>& tokens_per_s) {
  nlohmann::ordered_json j;
  j["weight_bytes_per_token"] = b.bytes.weight_bytes;
  j["kv_bytes_read_per_token"] = b.bytes.kv_bytes;
  j["read_bandwidth_bytes_per_s"] = median(b.bandwidth);
  j["read_bandwidth_bytes_per_s_reps"] = b.bandwidth;
  j["bound_tokens_per_s"] = b.tokens_per_s();
  j["fraction_of_bound"] = b.fraction(tokens_per_s);
  j["fraction_of_bound_reps"] = b.fractions(tokens_per_s);
  return j;
}

// One full-cache decode test: the cache filled to `depth` under sink:4+(depth-4) with
// KV type `kv`, then decoding.
struct DepthTest {
  int64_t depth = 0;
  std::string policy;  // canonical spec
  std::unique_ptr<Session> session;
  int64_t at = 0;  // next stream index
  double fill_s = 0.0;
  Series series;
  Bound bound;
};

// Decoding at stream position `position` under the bench's policy: the sinks and the window
// before the position computed by the model, the stream between skipped.
struct PositionTest {
  int64_t position = 0;
  std::unique_ptr<Session> session;
  int64_t at = 0;  // next token of the source to decode
  double fill_s = 0.0;
  Series series;
};

// Continuous batching: n sessions under the policy, each given its own 64-token prompt,
// then `gen` steps that decode one token of every session in one forward pass.
struct BatchedResult {
  int64_t streams = 0;
  Series agg;  // tokens_per_s: all streams together; latency_ms: per step
};

BatchedResult bench_batched(const model::Model& model, const kv::PolicySpec& policy,
                            std::span<const TokenId> tokens, int64_t n, int64_t gen, int reps,
                            ThreadPool& pool) {
  constexpr int64_t kPrompt = 64;
  BatchedResult r;
  r.streams = n;
  std::vector<std::unique_ptr<Session>> sessions;
  SessionOptions so;
  so.policy = kv::PolicySpec(policy);
  so.max_batch = kPrompt;
  so.max_stream = kPrompt + gen * (reps + 1);
  for (int64_t i = 0; i < n; ++i) sessions.push_back(std::make_unique<Session>(model, so, &pool));
  BatchDecoder dec(model, n, &pool);
  std::vector<BatchDecoder::Entry> entries(static_cast<size_t>(n));
  // Stream i reads the tokens from offset i * 7 (different streams, one token source).
  auto token = [&](int64_t i, int64_t k) {
    return &tokens[static_cast<size_t>((i * 7 + k) % static_cast<int64_t>(tokens.size()))];
  };
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < kPrompt; ++k) sessions[i]->advance(std::span(token(i, k), 1));
  int64_t at = kPrompt;
  auto step = [&] {
    for (int64_t i = 0; i < n; ++i)
      entries[static_cast<size_t>(i)] = {sessions[static_cast<size_t>(i)].get(),
                                         std::span(token(i, at), 1)};
    dec.step(entries);
    ++at;
  };
  for (int64_t k = 0; k < std::min<int64_t>(gen, 8); ++k) step();  // warm-up
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    for (int64_t k = 0; k < gen; ++k) {
      const auto ts = Clock::now();
      step();
      r.agg.latency_ms.push_back(seconds_since(ts) * 1e3);
    }
    r.agg.tokens_per_s.push_back(static_cast<double>(n * gen) / seconds_since(t0));
  }
  return r;
}

int run_bench(const BenchOptions& o) {
  if (o.reps < 1) throw InvalidArgument(fmt::format("--reps must be at least 1, got {}", o.reps));
  if (o.prompt < 1 || o.gen < 1)
    throw InvalidArgument(
        fmt::format("--prompt and --gen must be at least 1, got {} and {}", o.prompt, o.gen));
  if (o.stream < 0) throw InvalidArgument(fmt::format("--stream must be >= 0, got {}", o.stream));
  if (o.stream_batch < 1)
    throw InvalidArgument(fmt::format("--stream-batch must be at least 1, got {}", o.stream_batch));
  for (int64_t d : o.depths)
    if (d < 5 && d != 0)
      throw InvalidArgument(
          fmt::format("--depths: a depth must be at least 5 (4 sinks and a "
                      "window), or 0 for none; got {}",
                      d));
  // Check the specs before the model loads (a usage error, exit 2).
  const kv::PolicySpec policy(o.policy);
  std::vector<std::string> depth_specs;  // [depths][kv types]
  for (int64_t d : o.depths) {
    if (d == 0) continue;
    for (const std::string& t : o.kv)
      depth_specs.push_back(kv::PolicySpec(fmt::format("sink:4+{},kv={}", d - 4, t)).str());
  }
  const std::string policy_spec = policy.str();
  // The position tests need a policy that plans by position alone; each position holds the
  // policy's capacity before it.
  int64_t position_cap = 0;
  if (!o.positions.empty()) {
    const auto probe = kv::make_policy(policy, kv::PolicyLimits{1, 0});
    if (!probe->seekable() || !probe->capacity())
      throw InvalidArgument(fmt::format(
          "--positions needs a policy that plans by position alone (sink:S+W, window:W); "
          "--policy {} does not",
          policy_spec));
    position_cap = *probe->capacity();
    for (int64_t p : o.positions)
      if (p < position_cap || p > (int64_t{1} << 40))
        throw InvalidArgument(fmt::format(
            "--positions: {} is outside {}..2^40 (a position holds the policy's {} tokens "
            "before it)",
            p, position_cap, position_cap));
  }

  const auto load_t0 = Clock::now();
  auto model = model::Model::load(o.model);
  const double load_s = seconds_since(load_t0);
  const auto& cfg = model->config();
  ThreadPool pool(o.threads);
  const bool tty = stderr_is_tty();
  auto note = [&](const std::string& s) {
    if (tty) fmt::print(stderr, "{}\n", s);
  };

  std::string source;
  const int64_t n_stream_tokens = o.stream + o.gen * (o.reps + 1);
  int64_t max_depth = 0;
  for (int64_t d : o.depths) max_depth = std::max(max_depth, d);
  const int64_t n_depth_tokens = max_depth + o.gen * (o.reps + 1);
  const int64_t n_position_tokens = o.positions.empty() ? 0 : position_cap + 8 + o.gen * o.reps;
  const std::vector<TokenId> tokens = bench_tokens(
      *model, o.text,
      std::max({o.prompt + o.gen, n_stream_tokens, n_depth_tokens, n_position_tokens}), &source);
  const std::span<const TokenId> all(tokens);
  const std::span<const TokenId> prompt = all.first(static_cast<size_t>(o.prompt));
  const std::span<const TokenId> gen =
      all.subspan(static_cast<size_t>(o.prompt), static_cast<size_t>(o.gen));

  // pp: the whole prompt in one forward pass through a fresh `full` session.
  Series pp;
  uint64_t kv_bytes_pp = 0;
  {
    SessionOptions so;
    so.policy = kv::PolicySpec("full");
    so.max_batch = o.prompt;
    so.max_stream = o.prompt;
    Session s(*model, so, &pool);
    note(fmt::format("pp{}: warm-up", o.prompt));
    s.feed(prompt);  // warm-up: page in the weights, size every buffer
    for (int r = 0; r < o.reps; ++r) {
      s.reset();
      const auto t0 = Clock::now();
      s.feed(prompt);
      pp.tokens_per_s.push_back(static_cast<double>(o.prompt) / seconds_since(t0));
      note(fmt::format("pp{}: rep {}: {:.1f} tokens/s", o.prompt, r + 1, pp.tokens_per_s.back()));
    }
    kv_bytes_pp = s.storage().bytes();
  }

  // tg: tokens one at a time from an empty cache; the bound: the weights and, on average,
  // the keys and values of (gen + 1) / 2 tokens, its bandwidth probed after each repetition.
  const uint64_t wbytes = model->weight_bytes_per_token();
  BandwidthProbe probe;
  Bound tg_bound;
  Series tg;
  uint64_t kv_bytes_tg = 0;
  std::vector<double> sampler_us;  // per sampled token
  {
    SessionOptions so;
    so.policy = kv::PolicySpec("full");
    so.max_batch = 1;
    so.max_stream = o.gen;
    Session s(*model, so, &pool);
    kv_bytes_tg = s.storage().bytes();
    tg_bound.bytes = decode_bound(s, (o.gen + 1) / 2);  // the mean depth of the decode
    Series warm;
    decode_steps(s, gen.first(std::min<size_t>(gen.size(), 8)), warm);
    for (int r = 0; r < o.reps; ++r) {
      s.reset();
      const double t = decode_steps(s, gen, tg);
      tg.tokens_per_s.push_back(static_cast<double>(o.gen) / t);
      tg_bound.bandwidth.push_back(probe.measure(pool, tg_bound.bytes.bytes(), 10));
      note(fmt::format("tg{}: rep {}: {:.1f} tokens/s", o.gen, r + 1, tg.tokens_per_s.back()));
    }
    // The sampler over the logits of the first decoded tokens, timed alone per token.
    s.reset();
    const size_t n_keep = std::min<size_t>(gen.size(), 32);
    const auto n_vocab = static_cast<size_t>(cfg.n_vocab);
    std::vector<float> logits(n_keep * n_vocab);
    for (size_t i = 0; i < n_keep; ++i) {
      s.feed(gen.subspan(i, 1));
      std::copy(s.last_logits(), s.last_logits() + n_vocab, logits.begin() + i * n_vocab);
    }
    auto sampler = make_sampler(o.sampling);
    for (size_t i = 0; i < n_keep; ++i) sampler->sample(logits.data() + i * n_vocab, cfg.n_vocab);
    for (int r = 0; r < o.reps; ++r) {
      for (size_t i = 0; i < n_keep; ++i) {
        const auto t0 = Clock::now();
        sampler->accept(sampler->sample(logits.data() + i * n_vocab, cfg.n_vocab));
        sampler_us.push_back(seconds_since(t0) * 1e6);
      }
    }
  }

  // Full caches at each depth: every session filled first (batches of --stream-batch
  // tokens), then the repetitions alternate between the tests, so that a slow moment of
  // the machine hits them all. Each repetition probes the bandwidth of its working set
  // right after decoding.
  std::vector<DepthTest> depth_tests;
  {
    size_t i = 0;
    for (int64_t d : o.depths) {
      if (d == 0) continue;
      for (size_t k = 0; k < o.kv.size(); ++k, ++i) {
        DepthTest t;
        t.depth = d;
        t.policy = depth_specs[i];
        SessionOptions so;
        so.policy = kv::PolicySpec(t.policy);
        so.max_batch = o.stream_batch;
        so.max_stream = d + o.gen * (o.reps + 1);
        t.session = std::make_unique<Session>(*model, so, &pool);
        const auto t0 = Clock::now();
        for (int64_t done = 0; done < d;) {
          const int64_t n = std::min<int64_t>(1024, d - done);
          t.session->advance(all.subspan(static_cast<size_t>(done), static_cast<size_t>(n)));
          done += n;
        }
        t.fill_s = seconds_since(t0);
        t.at = d;
        note(fmt::format("{}: cache filled to {} in {:.1f} s", t.policy, d, t.fill_s));
        Series warm;
        decode_steps(*t.session, all.subspan(static_cast<size_t>(t.at), 8), warm);
        t.at += 8;
        t.bound.bytes = decode_bound(*t.session, d);
        depth_tests.push_back(std::move(t));
      }
    }
  }
  for (int r = 0; r < o.reps; ++r) {
    for (DepthTest& t : depth_tests) {
      const double secs = decode_steps(
          *t.session, all.subspan(static_cast<size_t>(t.at), static_cast<size_t>(o.gen)), t.series);
      t.at += o.gen;
      t.series.tokens_per_s.push_back(static_cast<double>(o.gen) / secs);
      t.bound.bandwidth.push_back(probe.measure(pool, t.bound.bytes.bytes(), 10));
      note(fmt::format("tg{} @ d{} {}: rep {}: {:.1f} tokens/s", o.gen, t.depth, t.policy, r + 1,
                       t.series.tokens_per_s.back()));
    }
  }

  // Deep in a stream: advance (real forward passes, no logits) once, then decode.
  Series deep;
  double advance_s = 0.0;
  uint64_t kv_bytes_deep = 0;
  if (o.stream > 0) {
    SessionOptions so;
    so.policy = kv::PolicySpec(policy);
    so.max_batch = o.stream_batch;
    so.max_stream = n_stream_tokens;
    Session s(*model, so, &pool);
    const auto t0 = Clock::now();
    Progress progress(fmt::format("advance to {}", o.stream));
    for (int64_t done = 0; done < o.stream;) {
      const int64_t n = std::min<int64_t>(1024, o.stream - done);
      s.advance(all.subspan(static_cast<size_t>(done), static_cast<size_t>(n)));
      done += n;
      progress.update(done, o.stream);
    }
    progress.finish();
    advance_s = seconds_since(t0);
    note(fmt::format("advanced to {} in {:.1f} s", o.stream, advance_s));
    Series warm;
    int64_t at = o.stream;
    decode_steps(s, all.subspan(static_cast<size_t>(at), static_cast<size_t>(o.gen)), warm);
    at += o.gen;
    for (int r = 0; r < o.reps; ++r) {
      const double t =
          decode_steps(s, all.subspan(static_cast<size_t>(at), static_cast<size_t>(o.gen)), deep);
      at += o.gen;
      deep.tokens_per_s.push_back(static_cast<double>(o.gen) / t);
      note(fmt::format("tg{} @ {}: rep {}: {:.1f} tokens/s", o.gen, o.stream, r + 1,
                       deep.tokens_per_s.back()));
    }
    kv_bytes_deep = s.storage().bytes();
  }

  // At stream positions: each session gets the policy's sinks and the window before its
  // position from real forward passes, the stream between skipped (Session::seek); the
  // repetitions alternate between the positions, so that a slow moment of the machine hits
  // them all, and each position's tokens/s is compared with the first's in the same
  // repetition.
  std::vector<PositionTest> position_tests;
  for (int64_t p : o.positions) {
    PositionTest t;
    t.position = p;
    SessionOptions so;
    so.policy = kv::PolicySpec(policy);
    so.max_batch = o.stream_batch;
    t.session = std::make_unique<Session>(*model, so, &pool);
    Session& s = *t.session;
    const int64_t cap = *s.policy().capacity(), sinks = s.policy().n_sinks();
    const auto t0 = Clock::now();
    s.advance(all.first(static_cast<size_t>(sinks)));
    s.seek(p - (cap - sinks));
    for (int64_t done = sinks; done < cap;) {
      const int64_t n = std::min<int64_t>(1024, cap - done);
      s.advance(all.subspan(static_cast<size_t>(done), static_cast<size_t>(n)));
      done += n;
    }
    t.fill_s = seconds_since(t0);
    Series warm;
    decode_steps(s, all.subspan(static_cast<size_t>(cap), 8), warm);
    t.at = cap + 8;
    note(fmt::format("{} at stream position {}: sinks and window computed in {:.1f} s", policy_spec,
                     p, t.fill_s));
    position_tests.push_back(std::move(t));
  }
  for (int r = 0; r < o.reps && !position_tests.empty(); ++r) {
    for (PositionTest& t : position_tests) {
      const double secs = decode_steps(
          *t.session, all.subspan(static_cast<size_t>(t.at), static_cast<size_t>(o.gen)), t.series);
      t.at += o.gen;
      t.series.tokens_per_s.push_back(static_cast<double>(o.gen) / secs);
      note(fmt::format("tg{} @ position {}: rep {}: {:.1f} tokens/s", o.gen, t.position, r + 1,
                       t.series.tokens_per_s.back()));
    }
  }
  // Each position's tokens/s over the first position's, repetition by repetition.
  auto paired_ratio = [&](const PositionTest& t) {
    std::vector<double> ratios;
    for (size_t r = 0; r < t.series.tokens_per_s.size(); ++r)
      ratios.push_back(t.series.tokens_per_s[r] / position_tests[0].series.tokens_per_s[r]);
    return ratios;
  };

  // Many streams decoded together.
  std::vector<BatchedResult> batched;
  for (int64_t n : o.streams) {
    note(fmt::format("{} streams decoded together", n));
    batched.push_back(bench_batched(*model, policy, all, n, o.gen, o.reps, pool));
  }

  const uint64_t rss = peak_resident_bytes();
  const double tg_med = median(tg.tokens_per_s);
  const double sampler_med_us = median(sampler_us);
  const double sampler_share = sampler_med_us * 1e-6 * tg_med;  // of a decoded token's time

  if (o.json) {
    nlohmann::ordered_json j;
    j["model"] = o.model;
    j["model_name"] = cfg.name;
    j["kernel_isa"] = ops::kernel_isa();
    j["threads"] = pool.size();
    j["reps"] = o.reps;
    j["tokens_from"] = source;
    j["load_seconds"] = load_s;
    j["weight_bytes_per_token"] = wbytes;
    j["prefill"] = series_json(pp, false);
    j["prefill"]["tokens"] = o.prompt;
    j["prefill"]["kv_bytes"] = kv_bytes_pp;
    j["decode"] = series_json(tg, true);
    j["decode"]["tokens"] = o.gen;
    j["decode"]["kv_bytes"] = kv_bytes_tg;
    j["decode"]["weight_bytes_per_s"] = tg_med * static_cast<double>(wbytes);
    j["decode"]["bound"] = bound_json(tg_bound, tg.tokens_per_s);
    j["depth"] = nlohmann::ordered_json::array();
    for (const DepthTest& t : depth_tests) {
      nlohmann::ordered_json jd = series_json(t.series, true);
      jd["depth"] = t.depth;
      jd["policy"] = t.policy;
      jd["kv_type"] = std::string(dtype_name(t.session->storage().type()));
      jd["tokens"] = o.gen;
      jd["fill_seconds"] = t.fill_s;
      jd["bound"] = bound_json(t.bound, t.series.tokens_per_s);
      j["depth"].push_back(jd);
    }
    j["sampler"]["settings"] = describe(o.sampling);
    j["sampler"]["us_per_token_median"] = sampler_med_us;
    j["sampler"]["fraction_of_decode"] = sampler_share;
    if (o.stream > 0) {
      j["stream"] = series_json(deep, true);
      j["stream"]["policy"] = policy_spec;
      j["stream"]["position"] = o.stream;
      j["stream"]["tokens"] = o.gen;
      j["stream"]["advance_seconds"] = advance_s;
      j["stream"]["advance_batch"] = o.stream_batch;
      j["stream"]["kv_bytes"] = kv_bytes_deep;
    } else {
      j["stream"] = nullptr;
    }
    j["positions"] = nlohmann::ordered_json::array();
    for (const PositionTest& t : position_tests) {
      nlohmann::ordered_json jp = series_json(t.series, true);
      jp["position"] = t.position;
      jp["policy"] = policy_spec;
      jp["tokens"] = o.gen;
      jp["fill_seconds"] = t.fill_s;
      const std::vector<double> ratios = paired_ratio(t);
      jp["ratio_to_first"] = median(ratios);
      jp["ratio_to_first_min"] = *std::min_element(ratios.begin(), ratios.end());
      jp["ratio_to_first_max"] = *std::max_element(ratios.begin(), ratios.end());
      j["positions"].push_back(jp);
    }
    j["batched"] = nlohmann::ordered_json::array();
    for (const BatchedResult& b : batched) {
      nlohmann::ordered_json jb = series_json(b.agg, true);
      jb["streams"] = b.streams;
      jb["policy"] = policy_spec;
      jb["tokens_per_stream"] = o.gen;
      jb["tokens_per_s_per_stream"] = median(b.agg.tokens_per_s) / static_cast<double>(b.streams);
      jb["fraction_of_prefill"] = median(b.agg.tokens_per_s) / median(pp.tokens_per_s);
      j["batched"].push_back(jb);
    }
    j["peak_rss_bytes"] = rss;
    fmt::print("{}\n", j.dump(2));
    return 0;
  }

  fmt::print("model    {} ({})\n", o.model, cfg.name.empty() ? "unnamed" : cfg.name);
  fmt::print("kernels  {}, {} thread(s), {} repetition(s), medians\n", ops::kernel_isa(),
             pool.size(), o.reps);
  fmt::print("tokens   {}\n\n", source);
  fmt::print("{:<32} {:>10} {:>12} {:>10} {:>12}\n", "test", "tokens/s", "median ms/tok", "p99 ms",
             "KV bytes");
  fmt::print("{:<32} {:>10.1f} {:>12.3f} {:>10} {:>12}\n", fmt::format("prefill pp{}", o.prompt),
             median(pp.tokens_per_s), 1e3 / median(pp.tokens_per_s), "-", human_bytes(kv_bytes_pp));
  fmt::print("{:<32} {:>10.1f} {:>12.3f} {:>10.3f} {:>12}\n", fmt::format("decode tg{}", o.gen),
             tg_med, median(tg.latency_ms), percentile(tg.latency_ms, 99.0),
             human_bytes(kv_bytes_tg));
  for (const DepthTest& t : depth_tests)
    fmt::print("{:<32} {:>10.1f} {:>12.3f} {:>10.3f} {:>12}\n",
               fmt::format("tg{} @ d{} {}", o.gen, t.depth, kv_type_label(*t.session)),
               median(t.series.tokens_per_s), median(t.series.latency_ms),
               percentile(t.series.latency_ms, 99.0), human_bytes(t.session->storage().bytes()));
  if (o.stream > 0)
    fmt::print("{:<32} {:>10.1f} {:>12.3f} {:>10.3f} {:>12}\n",
               fmt::format("tg{} @ {} {}", o.gen, o.stream, policy_spec), median(deep.tokens_per_s),
               median(deep.latency_ms), percentile(deep.latency_ms, 99.0),
               human_bytes(kv_bytes_deep));
  for (const PositionTest& t : position_tests)
    fmt::print("{:<32} {:>10.1f} {:>12.3f} {:>10.3f} {:>12}\n",
               fmt::format("tg{} @ position {}", o.gen, t.position), median(t.series.tokens_per_s),
               median(t.series.latency_ms), percentile(t.series.latency_ms, 99.0),
               human_bytes(t.session->storage().bytes()));
  fmt::print("{:<32} {:>10.1f} {:>12.3f} {:>10.3f} {:>12}\n",
             fmt::format("sampler ({})", describe(o.sampling)), 1e6 / sampler_med_us,
             sampler_med_us / 1e3, percentile(sampler_us, 99.0) / 1e3, "-");
  for (const BatchedResult& b : batched)
    fmt::print("{:<32} {:>10.1f} {:>12.3f} {:>10.3f} {:>12}\n",
               fmt::format("{} streams x tg{} {}", b.streams, o.gen, policy_spec),
               median(b.agg.tokens_per_s), median(b.agg.latency_ms),
               percentile(b.agg.latency_ms, 99.0), "-");
  if (!batched.empty()) {
    fmt::print(
        "({} streams: tokens/s of all streams together; ms per step, every stream one token)\n",
        "N");
    std::string shares;
    for (const BatchedResult& b : batched)
      shares += fmt::format("{}{}: {:.0f} %", shares.empty() ? "" : ", ", b.streams,
                            100.0 * median(b.agg.tokens_per_s) / median(pp.tokens_per_s));
    fmt::print("(streams together against prefill pp{}: {})\n", o.prompt, shares);
  }
  // The memory bound of each decode test.
  fmt::print("\n{:<32} {:>10} {:>10} {:>10} {:>10} {:>9}\n", "memory bound", "weights", "KV read",
             "GB/s", "bound t/s", "reached");
  auto bound_row = [&](const std::string& name, const Bound& b, const std::vector<double>& tps) {
    fmt::print("{:<32} {:>10} {:>10} {:>10.1f} {:>10.1f} {:>8.0f}%\n", name,
               human_bytes(b.bytes.weight_bytes), human_bytes(b.bytes.kv_bytes),
               median(b.bandwidth) / 1e9, b.tokens_per_s(), 100.0 * b.fraction(tps));
  };
  bound_row(fmt::format("decode tg{}", o.gen), tg_bound, tg.tokens_per_s);
  for (const DepthTest& t : depth_tests)
    bound_row(fmt::format("tg{} @ d{} {}", o.gen, t.depth, kv_type_label(*t.session)), t.bound,
              t.series.tokens_per_s);
  fmt::print(
      "(bytes a decoded token reads / read bandwidth of a buffer that size, {} thread(s), "
      "probed right after each repetition; reached: median over the repetitions of tokens/s "
      "over that repetition's bound; d{}: cache filled to {} under {})\n",
      pool.size(), "D", "D", "sink:4+(D-4)");
  fmt::print("\nsampler per token       {:.1f} us, {:.2f} % of a decoded token (tg{} median)\n",
             sampler_med_us, 100.0 * sampler_share, o.gen);
  fmt::print("weights read per token  {} ({:.2f} GB/s at the tg{} median)\n", human_bytes(wbytes),
             tg_med * static_cast<double>(wbytes) / 1e9, o.gen);
  if (o.stream > 0)
    fmt::print("stream advance          {} tokens in {:.1f} s ({:.1f} tokens/s, batch {})\n",
               o.stream, advance_s, static_cast<double>(o.stream) / advance_s, o.stream_batch);
  if (!position_tests.empty()) {
    fmt::print(
        "positions               under {}, tokens/s over position {}'s in the same repetition:",
        policy_spec, position_tests[0].position);
    for (size_t i = 1; i < position_tests.size(); ++i) {
      const std::vector<double> ratios = paired_ratio(position_tests[i]);
      fmt::print(" {} {:.3f} ({:.3f}..{:.3f})", position_tests[i].position, median(ratios),
                 *std::min_element(ratios.begin(), ratios.end()),
                 *std::max_element(ratios.begin(), ratios.end()));
    }
    fmt::print("\n");
  }
  fmt::print("peak RSS                {}\n", human_bytes(rss));
  return 0;
}

Registrar reg("bench", [](CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* sub = app.add_subcommand(
      "bench", "Prefill and decode speed, per-token latency, memory (llama-bench style)");
  sub->add_option("--model,-m", o->model, "GGUF model file")->capture_default_str();
  sub->add_option("--policy,-p", o->policy,
                  "Policy of the deep-stream decode: " + kv::policy_usage())
      ->capture_default_str();
  sub->add_option("--threads,-t", o->threads, "Threads (0: all cores)");
  sub->add_option("--reps,-r", o->reps, "Repetitions (medians are reported)")
      ->capture_default_str();
  sub->add_option("--prompt", o->prompt, "Prompt tokens of the prefill test (ppN)")
      ->capture_default_str();
  sub->add_option("--gen", o->gen, "Tokens decoded one at a time per repetition (tgN)")
      ->capture_default_str();
  sub->add_option("--stream", o->stream,
                  "Stream position of the deep decode, reached by real forward passes (0: skip)")
      ->capture_default_str();
  sub->add_option("--stream-batch", o->stream_batch, "Tokens per forward pass while advancing")
      ->capture_default_str();
  sub->add_option("--text", o->text, "Text whose tokens are fed (a fixed sequence if missing)")
      ->capture_default_str();
  sub->add_option("--streams", o->streams,
                  "Also decode N streams together, one forward pass per step (continuous "
                  "batching), for each N given (e.g. --streams 1,2,4,8,16)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--depths", o->depths,
                  "Cache depths D of the full-cache decode tests: the cache filled to D tokens "
                  "under sink:4+(D-4), then tgN (llama-bench -d D); 0: none")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--positions", o->positions,
                  "Stream positions of the position test, e.g. 10000,1000000: under --policy "
                  "(sink:S+W or window:W) the sinks and the window before each position are "
                  "computed, the stream between skipped (Session::seek), then tokens decoded; "
                  "ratios to the first position, repetition by repetition")
      ->delimiter(',');
  sub->add_option("--kv", o->kv, "KV types of the full-cache decode tests (f32, f16, q8_0)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--temp", o->sampling.temperature, "Temperature of the sampler measured")
      ->capture_default_str();
  sub->add_option("--top-k", o->sampling.top_k, "Top-k of the sampler measured (0: off)");
  sub->add_option("--top-p", o->sampling.top_p, "Top-p of the sampler measured")
      ->capture_default_str();
  sub->add_option("--min-p", o->sampling.min_p, "Min-p of the sampler measured (0: off)");
  sub->add_option("--repeat-penalty", o->sampling.repeat_penalty,
                  "Repeat penalty of the sampler measured (1: off)");
  sub->add_flag("--json", o->json, "Print the results as JSON on stdout");
  return [o] { return run_bench(*o); };
});

}  // namespace
}  // namespace spillway::cli
