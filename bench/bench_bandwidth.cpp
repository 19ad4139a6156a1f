// Memory read bandwidth: a streaming sum over a buffer much larger than every cache
// (1 GiB by default, in transparent huge pages as the model's weights are), with 1 and 2
// threads, reported as bytes/s. Decoding one token reads
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

#include "spillway/core/huge_pages.h"
#include "spillway/core/thread_pool.h"
#include "spillway/model/model.h"

namespace {

// The buffer, allocated and written once (so every page is resident before timing), in
// transparent huge pages as the model's interleaved weights are (HugePageBuffer).
struct Buffer {
  spillway::HugePageBuffer mem;
  size_t words = 0;
  const uint64_t* data() const { return reinterpret_cast<const uint64_t*>(mem.data()); }
  size_t size() const { return words; }
};
const Buffer& buffer() {
  static const Buffer buf = [] {
    uint64_t mib = 1024;
    if (const char* e = std::getenv("SPILLWAY_BW_MIB")) mib = std::strtoull(e, nullptr, 10);
    if (mib == 0) mib = 1024;
    Buffer b;
    b.words = static_cast<size_t>(mib * 1024 * 1024 / sizeof(uint64_t));
    b.mem = spillway::HugePageBuffer(b.words * sizeof(uint64_t));
    auto* w = reinterpret_cast<uint64_t*>(b.mem.data());
    for (size_t i = 0; i < b.words; ++i) w[i] = i;
    return b;
  }();
  return buf;
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

// Sum of words [begin, end): eight independent accumulators so the loop is bound by
// loads, not by the add latency; the compiler vectorizes it.
uint64_t sum_range(const uint64_t* p, int64_t begin, int64_t end) {
  uint64_t a[8] = {};
  int64_t i = begin;
  for (; i + 8 <= end; i += 8)
    for (int k = 0; k < 8; ++k) a[k] += p[i + k];
  for (; i < end; ++i) a[0] += p[i];
  uint64_t s = 0;
  for (uint64_t x : a) s += x;
  return s;
}

void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const auto& buf = buffer();
  const int64_t n = static_cast<int64_t>(buf.size());
  spillway::ThreadPool pool(threads);
  std::vector<uint64_t> partial(static_cast<size_t>(threads) * 8);  // a cache line apart
  for (auto _ : state) {
    pool.run([&](int ith, int nth) {
      const int64_t b = n * ith / nth, e = n * (ith + 1) / nth;
      partial[static_cast<size_t>(ith) * 8] = sum_range(buf.data(), b, e);
    });
    uint64_t total = 0;
    for (int t = 0; t < threads; ++t) total += partial[static_cast<size_t>(t) * 8];
    benchmark::DoNotOptimize(total);
  }
  const double bytes = static_cast<double>(buf.size() * sizeof(uint64_t));
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
  const auto& buf = buffer();
  benchmark::AddCustomContext("buffer_bytes", std::to_string(buf.size() * sizeof(uint64_t)));
  if (const uint64_t w = model_bytes_per_token())
    benchmark::AddCustomContext("model_weight_bytes_per_token", std::to_string(w));
  else
    benchmark::AddCustomContext("model_weight_bytes_per_token",
                                "unknown (no model; set SPILLWAY_MODEL)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
