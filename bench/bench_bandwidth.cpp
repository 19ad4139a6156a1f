// Memory read bandwidth: the library's probe (core/bandwidth.h), a streaming sum over a
// buffer much larger than every cache (1 GiB by default, in transparent huge pages as the
// model's weights are), with 1 and 2 threads, reported as bytes/s. Decoding one token reads
// every weight once, so with the model's weight bytes per token this gives the bound
//
//   decode tokens/s <= read bandwidth / Model::weight_bytes_per_token()
//
// reported as the counter bound_tok/s when the default model is found ($SPILLWAY_MODEL,
// else models/SmolLM2-135M-Instruct.Q4_1.gguf from the working directory).
//
//   bench_bandwidth --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   SPILLWAY_BW_MIB=4096 bench_bandwidth      # another buffer size
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "spillway/core/bandwidth.h"
#include "spillway/core/thread_pool.h"
#include "spillway/model/model.h"

namespace {

// The buffer size: 1 GiB, or SPILLWAY_BW_MIB MiB.
uint64_t buffer_bytes() {
  uint64_t mib = 1024;
  if (const char* e = std::getenv("SPILLWAY_BW_MIB")) mib = std::strtoull(e, nullptr, 10);
  if (mib == 0) mib = 1024;
  return mib << 20;
}

// The library's probe (core/bandwidth.h), its buffer allocated and written once, before
// timing, in transparent huge pages as the model's interleaved weights are.
spillway::BandwidthProbe& probe() {
  static spillway::BandwidthProbe p = [] {
    spillway::BandwidthProbe q;
    q.reserve(buffer_bytes());
    return q;
  }();
  return p;
}

// Weight bytes one decoded token reads, 0 when no model is found.
uint64_t model_bytes_per_token() {
  static const uint64_t bytes = [] {
    std::string path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (const char* e = std::getenv("SPILLWAY_MODEL")) path = e;
    if (!std::filesystem::exists(path)) return uint64_t{0};
    try {
      return spillway::model::Model::load(path)->weight_bytes_per_token();
    } catch (const std::exception& e) {
      fmt::print(stderr, "bench_bandwidth: cannot load {}: {}\n", path, e.what());
      return uint64_t{0};
    }
  }();
  return bytes;
}

void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const uint64_t n = buffer_bytes();
  spillway::ThreadPool pool(threads);
  for (auto _ : state) benchmark::DoNotOptimize(probe().sweep(pool, n));
  const auto bytes = static_cast<double>(n);
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
  state.counters["threads"] = threads;
  if (const uint64_t w = model_bytes_per_token()) {
    // Tokens whose weights could have been streamed in the same time.
    state.counters["bound_tok/s"] =
        benchmark::Counter(bytes / static_cast<double>(w) * static_cast<double>(state.iterations()),
                           benchmark::Counter::kIsRate);
  }
}
BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  probe();
  benchmark::AddCustomContext("buffer_bytes", std::to_string(buffer_bytes()));
  if (const uint64_t w = model_bytes_per_token())
    benchmark::AddCustomContext("model_weight_bytes_per_token", std::to_string(w));
  else
    benchmark::AddCustomContext("model_weight_bytes_per_token",
                                "unknown (no model; set SPILLWAY_MODEL)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
