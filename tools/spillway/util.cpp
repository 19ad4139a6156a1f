#include "util.h"

#include <CLI/CLI.hpp>

#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "command.h"
#include "spillway/core/error.h"

namespace spillway::cli {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

bool stderr_is_tty() {
  return isatty(fileno(stderr)) != 0;
}

Progress::Progress(std::string label)
    : label_(std::move(label)), tty_(stderr_is_tty()), start_(now_seconds()) {}

void Progress::update(int64_t done, int64_t total) {
  const double t = now_seconds();
  if (!tty_) {
    // A log (stderr not a terminal): a plain line a minute, so that long runs can be
    // followed; runs under a minute print none.
    if (t - std::max(start_, last_draw_) < 60.0) return;
    last_draw_ = t;
    const double rate = static_cast<double>(done) / (t - start_);
    fmt::print(stderr, "{}: {}/{} tokens, {:.0f} tok/s, {:.0f} s, ETA {:.0f} s\n", label_, done,
               total, rate, t - start_, rate > 0 ? static_cast<double>(total - done) / rate : 0.0);
    std::fflush(stderr);
    return;
  }
  if (done < total && t - last_draw_ < 0.2) return;
  last_draw_ = t;
  const double elapsed = t - start_;
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0.0;
  constexpr int kWidth = 30;
  const int filled = total > 0 ? static_cast<int>(kWidth * done / total) : 0;
  fmt::print(stderr, "\r{:<24} [{}{}] {}/{} tokens  {:.0f} tok/s  ETA {:.0f}s   ", label_,
             std::string(static_cast<size_t>(filled), '#'),
             std::string(static_cast<size_t>(kWidth - filled), '.'), done, total, rate, eta);
  std::fflush(stderr);
}

void Progress::finish() {
  if (!tty_) return;
  fmt::print(stderr, "\r{}\r", std::string(100, ' '));
  std::fflush(stderr);
}

std::string human_bytes(uint64_t b) {
  if (b < 1024) return fmt::format("{} B", b);
  if (b < 1024 * 1024) return fmt::format("{:.2f} KiB", static_cast<double>(b) / 1024);
  if (b < 1024ull * 1024 * 1024) return fmt::format("{:.2f} MiB", static_cast<double>(b) / 1048576);
  return fmt::format("{:.2f} GiB", static_cast<double>(b) / 1073741824.0);
}

void add_generation_options(CLI::App& sub, SamplerParams& sampling, GenerateOptions& gen,
                            const std::string& what_n) {
  sub.add_option("-n", gen.max_new_tokens, what_n)->capture_default_str();
  sub.add_option("--temp", sampling.temperature, "Sampling temperature (0: greedy)")
      ->capture_default_str();
  sub.add_option("--top-k", sampling.top_k, "Keep the k most likely tokens (0: off)");
  sub.add_option("--top-p", sampling.top_p, "Keep the smallest set with this much probability");
  sub.add_option("--min-p", sampling.min_p,
                 "Drop tokens less likely than this times the most likely (0: off)");
  sub.add_option("--repeat-penalty", sampling.repeat_penalty,
                 "Divide the logits of recent tokens by this (1: off)");
  sub.add_option("--repeat-last-n", sampling.repeat_last_n,
                 "Recent tokens the repeat penalty looks at")
      ->capture_default_str();
  sub.add_option("--seed", sampling.seed, "Random seed (same seed, same output)");
  sub.add_option("--stop", gen.stop,
                 "Stop where this text appears (repeatable); the text before it is kept");
  sub.add_flag_callback(
      "--ignore-eos", [&gen] { gen.stop_at_eog = false; },
      "Keep going past end-of-generation tokens (up to -n)");
}

}  // namespace spillway::cli
