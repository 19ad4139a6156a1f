// Per-token decode latency of the real model, per cache policy and cache size, deep into a
// stream: window:W, sink:4+(W-4) and recompute:W for W in {256, 1024, 4096}, at stream
// positions 1K and 16K (and 64K with SPILLWAY_BENCH_LONG=1). One iteration feeds one
// token and computes its logits.
//
// Every position is reached by really running the model over the stream (chunked
// forward passes without logits): the cached K/V of a token depend on everything before
// it, so there is no honest shortcut. One session per policy is advanced lazily and shared
// by that policy's positions, in increasing order. Advancing costs one prefill of the
// stream per window/sink policy (16K tokens each at the default positions; minutes on a
// small machine); recompute policies only remember tokens when advancing, but pay a
// replay of W tokens for every decoded token (recompute:4096 only with
// SPILLWAY_BENCH_LONG=1).
//
// Needs the model ($SPILLWAY_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf from the
// working directory); without it, says so and exits 0. Tokens come from data/austen.txt
// ($SPILLWAY_CORPUS), or a fixed sequence when it is missing.
//
// Environment: SPILLWAY_BENCH_SIZES (default "256,1024,4096"), SPILLWAY_BENCH_POSITIONS
// (default "1024,16384", plus 65536 with SPILLWAY_BENCH_LONG=1), SPILLWAY_BENCH_KINDS
// (default "window,sink,recompute"), SPILLWAY_BENCH_THREADS (default: all cores).
//
//   cd /path/to/spillway && build/bin/bench_decode
//   SPILLWAY_BENCH_SIZES=1024 SPILLWAY_BENCH_KINDS=sink,recompute build/bin/bench_decode
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/model/model.h"
#include "spillway/ops/matmul.h"
#include "spillway/session/session.h"

namespace {

using spillway::Session;
using spillway::SessionOptions;
using spillway::TokenId;
using Clock = std::chrono::steady_clock;

constexpr int64_t kAdvanceBatch = 128;  // tokens per forward pass when advancing / replaying
constexpr int64_t kSinks = 4;

struct Shared {
  std::unique_ptr<spillway::model::Model> model;
  std::unique_ptr<spillway::ThreadPool> pool;
  std::vector<TokenId> corpus;  // stream token i is corpus[i % size]
  std::map<std::string, std::unique_ptr<Session>> sessions;
};
Shared* g = nullptr;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<int64_t> split_ints(const std::string& s) {
  std::vector<int64_t> out;
  for (const auto& x : split(s)) out.push_back(std::stoll(x));
  return out;
}

std::vector<TokenId> load_corpus(const spillway::model::Model& model, int64_t want) {
  const std::string path = env_or("SPILLWAY_CORPUS", "data/austen.txt");
  std::ifstream f(path, std::ios::binary);
  if (f) {
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    text.resize(std::min(text.size(), static_cast<size_t>(want) * 6 + 4096));
    auto ids = model.tokenizer().encode(text);
    if (!ids.empty()) {
      fmt::print(stderr, "bench_decode: {} tokens of {}\n", ids.size(), path);
      return ids;
    }
  }
  fmt::print(stderr, "bench_decode: {} not found; feeding a fixed token sequence\n", path);
  std::vector<TokenId> ids(static_cast<size_t>(want));
  for (int64_t i = 0; i < want; ++i)
    ids[static_cast<size_t>(i)] = static_cast<TokenId>(1000 + (i * 7919) % 40000);
  return ids;
}

TokenId stream_token(int64_t i) {
  return g->corpus[static_cast<size_t>(i) % g->corpus.size()];
}

// The shared session of `spec`, advanced (really run, no logits) to at least `position`.
Session& session_at(const std::string& spec, int64_t position) {
  auto& s = g->sessions[spec];
  if (!s) {
    SessionOptions so;
    so.policy = spillway::kv::PolicySpec(spec);
    so.max_batch = kAdvanceBatch;
    s = std::make_unique<Session>(*g->model, so, g->pool.get());
  }
  if (s->n_past() < position) {
    const auto t0 = Clock::now();
    const int64_t from = s->n_past();
    std::vector<TokenId> chunk;
    while (s->n_past() < position) {
      const int64_t n = std::min<int64_t>(1024, position - s->n_past());
      chunk.clear();
      for (int64_t i = 0; i < n; ++i) chunk.push_back(stream_token(s->n_past() + i));
      s->advance(chunk);
    }
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
    fmt::print(stderr, "bench_decode: {} advanced {} -> {} in {:.1f} s\n", spec, from, position,
               sec);
  }
  return *s;
}

void BM_Decode(benchmark::State& state, std::string spec, int64_t position) {
  Session& s = session_at(spec, position);
  const int64_t start = s.n_past();
  std::vector<double> ms;
  ms.reserve(static_cast<size_t>(state.max_iterations));
  for (auto _ : state) {
    const TokenId t = stream_token(s.n_past());
    const auto t0 = Clock::now();
    s.feed(std::span<const TokenId>(&t, 1));
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    benchmark::DoNotOptimize(s.last_logits());
  }
  std::sort(ms.begin(), ms.end());
  auto rank = [&](double p) {
    const auto k = static_cast<size_t>(p * static_cast<double>(ms.size()) + 0.999999);
    return ms[std::clamp<size_t>(k, 1, ms.size()) - 1];
  };
  state.counters["pos"] = static_cast<double>(start);
  state.counters["median_ms"] = rank(0.5);
  state.counters["p99_ms"] = rank(0.99);
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["kv_MiB"] = static_cast<double>(s.storage().bytes()) / (1024.0 * 1024.0);
  const auto cap = s.policy().capacity();
  state.counters["span"] =
      static_cast<double>(cap ? std::min<int64_t>(*cap, start + 1) : start + 1);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const std::string model_path = env_or("SPILLWAY_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!std::filesystem::exists(model_path)) {
    fmt::print(
        "bench_decode: model '{}' not found (run scripts/setup.sh, or set "
        "SPILLWAY_MODEL); nothing measured\n",
        model_path);
    return 0;
  }
  const bool long_run = env_or("SPILLWAY_BENCH_LONG", "0") == "1";
  std::vector<int64_t> sizes, positions;
  std::vector<std::string> kinds;
  try {
    sizes = split_ints(env_or("SPILLWAY_BENCH_SIZES", "256,1024,4096"));
    positions = split_ints(
        env_or("SPILLWAY_BENCH_POSITIONS", long_run ? "1024,16384,65536" : "1024,16384"));
    kinds = split(env_or("SPILLWAY_BENCH_KINDS", "window,sink,recompute"));
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_decode: bad SPILLWAY_BENCH_SIZES/POSITIONS: {}\n", e.what());
    return 2;
  }
  std::sort(positions.begin(), positions.end());

  Shared shared;
  g = &shared;
  try {
    shared.model = spillway::model::Model::load(model_path);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_decode: {}\n", e.what());
    return 1;
  }
  shared.pool = std::make_unique<spillway::ThreadPool>(
      static_cast<int>(std::stoll(env_or("SPILLWAY_BENCH_THREADS", "0"))));
  shared.corpus = load_corpus(*shared.model, positions.empty() ? 4096 : positions.back() + 4096);

  benchmark::AddCustomContext("model", model_path);
  benchmark::AddCustomContext("kernel_isa", spillway::ops::kernel_isa());
  benchmark::AddCustomContext("threads", std::to_string(shared.pool->size()));
  if (!long_run)
    benchmark::AddCustomContext("note",
                                "position 64K and recompute:4096 run only with "
                                "SPILLWAY_BENCH_LONG=1");

  for (const auto& kind : kinds) {
    for (int64_t w : sizes) {
      std::string spec;
      int64_t iters = 32;
      if (kind == "window") {
        spec = fmt::format("window:{}", w);
      } else if (kind == "sink") {
        if (w <= kSinks) continue;
        spec = fmt::format("sink:{}+{}", kSinks, w - kSinks);
      } else if (kind == "recompute") {
        if (w > 1024 && !long_run) continue;
        spec = fmt::format("recompute:{}", w);
        iters = 2;  // every token replays W tokens
      } else {
        fmt::print(stderr, "bench_decode: unknown kind '{}' (window, sink, recompute)\n", kind);
        return 2;
      }
      for (int64_t pos : positions) {
        benchmark::RegisterBenchmark(fmt::format("decode/{}/pos:{}", spec, pos).c_str(), BM_Decode,
                                     spec, pos)
            ->Iterations(iters)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  shared.sessions.clear();
  g = nullptr;
  return 0;
}
