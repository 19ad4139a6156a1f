// The health of a long stream, judged from its checkpoints (`spillway soak` records them):
// does the stream keep its memory, its cache size and its speed, and stay finite? A
// stream that can run for ever must: no non-finite logit; after the warm-up, RSS growth
// below a bound within every process that ran part of it (a segment: a soak stopped and
// resumed from its saved state runs in several, each with its own baseline); KV bytes
// unchanged; and no slowdown beyond a bound, judged by the least-squares trend of the
// interval medians with its 95 % interval, so that the host's own noise cannot decide it:
// a trend whose interval straddles the bound is "not judged", and a faster end never
// fails. Where the checkpoints carry them, the judgement reads the process's CPU time per
// step (which other processes on the host do not lengthen) rather than wall time, and its
// anonymous resident set (what it allocated) rather than the whole, whose file pages follow
// the page cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace spillway::analysis {

// What a stream looked like over one interval, at its end.
struct SoakCheckpoint {
  int64_t tokens = 0;              // stream tokens (per stream) decoded so far
  double seconds = 0.0;            // stream time so far
  double tokens_per_s = 0.0;       // over the interval, every stream
  double latency_ms_median = 0.0;  // per step, over the interval
  double latency_ms_p99 = 0.0;
  double latency_ms_max = 0.0;
  double cpu_ms_median = -1.0;  // process CPU time per step, over the interval; < 0: unknown
  uint64_t rss_bytes = 0;
  uint64_t rss_anon_bytes = 0;  // the anonymous part of rss_bytes; 0: unknown
  uint64_t kv_bytes = 0;
  int64_t nonfinite = 0;      // non-finite logits so far
  double nll_interval = 0.0;  // mean NLL of the next token over the interval
  double nll_running = 0.0;   // over the stream so far
  int64_t nll_tokens = 0;     // predictions scored so far
  int64_t segment = 0;        // the process that ran the interval (0, then 1 per resume)
};

struct SoakCriteria {
  int64_t every = 10'000;              // tokens per interval
  int64_t warmup = 10'000;             // intervals that start before this are not judged
  double max_drift = 0.05;             // the largest slowdown that passes, as a share of the start
  int64_t max_rss_growth = 1'000'000;  // bytes, within a segment
  size_t min_intervals = 3;            // fewer judged intervals: not judged
};

enum class SoakVerdict { kPass, kFail, kNotJudged };
std::string_view to_string(SoakVerdict v);  // "pass", "fail", "not judged"

struct SoakJudgement {
  size_t judged_intervals = 0;  // intervals that start at or past the warm-up
  bool finite_ok = true;        // no non-finite logit in the whole stream
  // The rest is set when judged_intervals >= min_intervals (`judged`).
  bool judged = false;
  const SoakCheckpoint* baseline = nullptr;  // the first judged checkpoint
  const SoakCheckpoint* last = nullptr;
  // Latency: the trend over the judged stream as a share of its fitted start, with the
  // 95 % interval, of cpu_ms_median when every judged checkpoint has it (latency_on_cpu),
  // else of latency_ms_median; kPass ("ok") when the interval lies at or below max_drift, kFail
  // when it lies above, kNotJudged when it straddles it.
  double drift = 0.0, drift_low = 0.0, drift_high = 0.0;
  SoakVerdict latency = SoakVerdict::kNotJudged;
  bool latency_on_cpu = false;
  // RSS: the largest growth within one segment, from its first judged checkpoint (a resumed
  // segment's first interval is its warm-up and is skipped when it has more) to its last;
  // of rss_anon_bytes when every judged checkpoint has it (rss_anonymous), else of
  // rss_bytes.
  int64_t rss_growth = 0;
  const SoakCheckpoint* rss_from = nullptr;
  const SoakCheckpoint* rss_to = nullptr;
  bool rss_ok = true;
  bool rss_anonymous = false;
  bool kv_ok = true;  // every judged checkpoint has the baseline's KV bytes
  int64_t segments = 1;
  // kFail if any goal failed (a non-finite logit always does), kPass if all held, else
  // kNotJudged.
  SoakVerdict verdict = SoakVerdict::kNotJudged;
};

// Judges the checkpoints of one stream in order (at least one). The judgement points into
// `checkpoints`, which must outlive it.
SoakJudgement judge_soak(std::span<const SoakCheckpoint> checkpoints, const SoakCriteria& c);

}  // namespace spillway::analysis
