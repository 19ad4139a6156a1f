#include "spillway/analysis/soak.h"

#include <algorithm>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/core/stats.h"

namespace spillway::analysis {

std::string_view to_string(SoakVerdict v) {
  switch (v) {
    case SoakVerdict::kPass:
      return "pass";
    case SoakVerdict::kFail:
      return "fail";
    default:
      return "not judged";
  }
}

SoakJudgement judge_soak(std::span<const SoakCheckpoint> checkpoints, const SoakCriteria& c) {
  if (checkpoints.empty()) throw InvalidArgument("judge_soak: no checkpoints");
  SoakJudgement j;
  j.last = &checkpoints.back();
  j.finite_ok = j.last->nonfinite == 0;
  j.segments = j.last->segment + 1;
  std::vector<const SoakCheckpoint*> judged;
  for (const SoakCheckpoint& k : checkpoints)
    if (k.tokens - c.every >= c.warmup) judged.push_back(&k);
  j.judged_intervals = judged.size();
  if (judged.size() < c.min_intervals) {
    j.verdict = j.finite_ok ? SoakVerdict::kNotJudged : SoakVerdict::kFail;
    return j;
  }
  j.judged = true;
  j.baseline = judged.front();

  j.rss_anonymous = std::all_of(judged.begin(), judged.end(),
                                [](const SoakCheckpoint* k) { return k->rss_anon_bytes > 0; });
  auto rss = [&](const SoakCheckpoint* k) {
    return static_cast<int64_t>(j.rss_anonymous ? k->rss_anon_bytes : k->rss_bytes);
  };
  j.rss_from = j.rss_to = j.baseline;
  bool first_segment = true;
  for (size_t i = 0; i < judged.size();) {
    const int64_t seg = judged[i]->segment;
    size_t end = i;
    while (end + 1 < judged.size() && judged[end + 1]->segment == seg) ++end;
    // A resumed process's first interval holds its start (the model, the state read, the
    // first save): its baseline is the next checkpoint when there is one.
    const size_t from = seg > 0 && end > i ? i + 1 : i;
    const int64_t growth = rss(judged[end]) - rss(judged[from]);
    if (first_segment || growth > j.rss_growth) {
      j.rss_growth = growth;
      j.rss_from = judged[from];
      j.rss_to = judged[end];
    }
    first_segment = false;
    i = end + 1;
  }
  j.rss_ok = j.rss_growth < c.max_rss_growth;
  for (const SoakCheckpoint* k : judged) j.kv_ok = j.kv_ok && k->kv_bytes == j.baseline->kv_bytes;

  j.latency_on_cpu = std::all_of(judged.begin(), judged.end(),
                                 [](const SoakCheckpoint* k) { return k->cpu_ms_median >= 0.0; });
  std::vector<double> xs, ys;
  for (const SoakCheckpoint* k : judged) {
    xs.push_back(static_cast<double>(k->tokens));
    ys.push_back(j.latency_on_cpu ? k->cpu_ms_median : k->latency_ms_median);
  }
  const stats::Trend t = stats::linear_trend(xs, ys);
  const double span = xs.back() - xs.front();
  const double level = t.intercept + t.slope * xs.front();
  j.drift = t.slope * span / level;
  j.drift_low = t.slope_low * span / level;
  j.drift_high = t.slope_high * span / level;
  j.latency = j.drift_low > c.max_drift     ? SoakVerdict::kFail
              : j.drift_high <= c.max_drift ? SoakVerdict::kPass
                                            : SoakVerdict::kNotJudged;
  const bool failed = !j.finite_ok || !j.rss_ok || !j.kv_ok || j.latency == SoakVerdict::kFail;
  j.verdict = failed                            ? SoakVerdict::kFail
              : j.latency == SoakVerdict::kPass ? SoakVerdict::kPass
                                                : SoakVerdict::kNotJudged;
  return j;
}

}  // namespace spillway::analysis
