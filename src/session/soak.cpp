#include "spillway/session/soak.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "spillway/core/error.h"
#include "spillway/core/process.h"
#include "spillway/core/stats.h"

namespace spillway {
namespace {

using Clock = std::chrono::steady_clock;

// NLL of `target` under `logits` ([n]), in double, over the finite entries; adds the count
// of the others to *nonfinite.
double finite_nll(const float* logits, int64_t n, TokenId target, int64_t* nonfinite) {
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

}  // namespace

SoakRun::SoakRun(const model::Model& model, std::vector<TokenId> corpus, const SoakOptions& options,
                 ThreadPool* pool)
    : model_(model), corpus_(std::move(corpus)), every_(options.every) {
  if (options.streams < 1 || options.streams > 256)
    throw InvalidArgument(fmt::format("soak: streams must be in 1..256, got {}", options.streams));
  if (options.every < 1)
    throw InvalidArgument(fmt::format("soak: every must be at least 1, got {}", options.every));
  if (!kv::make_policy(options.policy, kv::PolicyLimits{1, 0})->capacity())
    throw InvalidArgument(fmt::format(
        "soak: policy {}: a soak needs a bounded cache (this one grows with the stream)",
        options.policy.str()));
  if (corpus_.size() < 2)
    throw InvalidArgument(
        fmt::format("soak: the corpus has {} token(s), a stream needs 2", corpus_.size()));
  stride_ = static_cast<int64_t>(corpus_.size()) / options.streams;
  SessionOptions so;
  so.policy = options.policy;
  so.max_batch = 1;  // the decode path: one token per forward pass, storage exactly S+W
  for (int64_t i = 0; i < options.streams; ++i)
    sessions_.push_back(std::make_unique<Session>(model_, so, pool));
  if (options.streams > 1) decoder_ = std::make_unique<BatchDecoder>(model_, options.streams, pool);
  entries_.resize(static_cast<size_t>(options.streams));
  step_tokens_.resize(static_cast<size_t>(options.streams));
  wall_ms_.reserve(static_cast<size_t>(std::min<int64_t>(every_, 1 << 20)));
  cpu_ms_.reserve(wall_ms_.capacity());
}

SoakRun::~SoakRun() = default;

TokenId SoakRun::token_at(int64_t stream, int64_t n) const {
  const auto size = static_cast<int64_t>(corpus_.size());
  return corpus_[static_cast<size_t>((stream * stride_ + n) % size)];
}

void SoakRun::resume(SoakProgress progress, std::span<const std::string_view> states,
                     const std::string& what) {
  if (started_) throw InvalidArgument("SoakRun::resume: the soak has already run");
  if (states.size() != sessions_.size())
    throw FormatError(
        fmt::format("{}: {} session states for {} streams", what, states.size(), sessions_.size()));
  for (size_t i = 0; i < sessions_.size(); ++i) {
    sessions_[i]->load_state(states[i], fmt::format("{} (stream {})", what, i));
    if (sessions_[i]->n_past() != progress.tokens)
      throw FormatError(fmt::format("{}: the soak is at token {}, stream {}'s session at {}", what,
                                    progress.tokens, i, sessions_[i]->n_past()));
  }
  segment_ = progress.checkpoints.empty() ? 0 : progress.checkpoints.back().segment + 1;
  seconds_before_ = progress.seconds;
  progress_ = std::move(progress);
}

std::vector<std::string> SoakRun::save_states() const {
  std::vector<std::string> out;
  for (const auto& s : sessions_) out.push_back(s->save_state());
  return out;
}

uint64_t SoakRun::kv_bytes() const {
  uint64_t b = 0;
  for (const auto& s : sessions_) b += s->storage().bytes();
  return b;
}

uint64_t SoakRun::kv_bytes_peak() const {
  uint64_t b = 0;
  for (const auto& s : sessions_) b += s->kv_bytes_peak();
  return b;
}

const analysis::SoakCheckpoint& SoakRun::run_interval(int64_t end) {
  SoakProgress& p = progress_;
  if (end <= p.tokens)
    throw InvalidArgument(
        fmt::format("SoakRun::run_interval: end {} is not past token {}", end, p.tokens));
  const auto t_interval = Clock::now();
  if (!started_) {
    t0_ = t_interval;
    started_ = true;
  }
  const int64_t n_vocab = model_.config().n_vocab;
  const auto n_streams = static_cast<int64_t>(sessions_.size());
  wall_ms_.clear();
  cpu_ms_.clear();
  double nll_sum = 0.0;
  int64_t nll_count = 0;
  Clock::time_point te;
  int64_t n = p.tokens;
  for (; n < end; ++n) {
    for (size_t i = 0; i < sessions_.size(); ++i) {
      step_tokens_[i] = token_at(static_cast<int64_t>(i), n);
      entries_[i] = {sessions_[i].get(), std::span(&step_tokens_[i], 1)};
    }
    const auto ts = Clock::now();
    const double cs = process_cpu_seconds();
    if (decoder_)
      decoder_->step(entries_);
    else
      sessions_[0]->feed(entries_[0].tokens);
    const double ce = process_cpu_seconds();
    te = Clock::now();
    wall_ms_.push_back(std::chrono::duration<double, std::milli>(te - ts).count());
    if (cs >= 0 && ce >= 0) cpu_ms_.push_back(1e3 * (ce - cs));
    // The logits of token n predict token n + 1, which the repeated corpus always has (the
    // last token's too, so that a stream stopped and resumed scores what one run does).
    for (size_t i = 0; i < sessions_.size(); ++i) {
      const double nll = finite_nll(sessions_[i]->last_logits(), n_vocab,
                                    token_at(static_cast<int64_t>(i), n + 1), &p.nonfinite);
      nll_sum += nll;
      p.nll_sum += nll;
      ++nll_count;
      ++p.nll_count;
    }
    if ((n + 1) % every_ == 0) {
      ++n;
      break;
    }
  }
  analysis::SoakCheckpoint c;
  c.tokens = n;
  c.seconds = seconds_before_ + std::chrono::duration<double>(te - t0_).count();
  c.tokens_per_s = static_cast<double>(static_cast<int64_t>(wall_ms_.size()) * n_streams) /
                   std::chrono::duration<double>(te - t_interval).count();
  c.latency_ms_median = stats::median(wall_ms_);
  c.latency_ms_p99 = stats::percentile(wall_ms_, 99.0);
  c.latency_ms_max = *std::max_element(wall_ms_.begin(), wall_ms_.end());
  if (cpu_ms_.size() == wall_ms_.size()) c.cpu_ms_median = stats::median(cpu_ms_);
  c.rss_bytes = resident_bytes();
  c.rss_anon_bytes = anonymous_resident_bytes();
  c.kv_bytes = kv_bytes();
  c.nonfinite = p.nonfinite;
  c.nll_interval = nll_count ? nll_sum / static_cast<double>(nll_count) : 0.0;
  c.nll_running = p.nll_count ? p.nll_sum / static_cast<double>(p.nll_count) : 0.0;
  c.nll_tokens = p.nll_count;
  c.segment = segment_;
  p.tokens = n;
  p.seconds = c.seconds;
  p.checkpoints.push_back(c);
  return p.checkpoints.back();
}

}  // namespace spillway
