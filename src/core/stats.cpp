#include "spillway/core/stats.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace spillway::stats {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void drop_nan(std::vector<double>& v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
}

}  // namespace

double median(std::vector<double> v) {
  drop_nan(v);
  if (v.empty()) return kNaN;
  const size_t m = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m), v.end());
  if (v.size() % 2 == 1) return v[m];
  const double hi = v[m];
  const double lo = *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(m));
  return 0.5 * (lo + hi);
}

double percentile(std::vector<double> v, double p) {
  drop_nan(v);
  if (v.empty()) return kNaN;
  const double n = static_cast<double>(v.size());
  const auto rank = static_cast<size_t>(std::ceil(std::clamp(p, 0.0, 100.0) / 100.0 * n));
  const size_t k = std::clamp<size_t>(rank, 1, v.size()) - 1;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

double t95(int dof) {
  // Two-sided 95 % quantiles of Student's t (the 0.975 quantile) for 1..30 degrees of
  // freedom; past 30 the normal quantile is within 2 %.
  static constexpr double kT[30] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306,
                                    2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
                                    2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                                    2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (dof < 1) return kNaN;
  if (dof <= 30) return kT[dof - 1];
  if (dof <= 60) return 2.000 + (2.042 - 2.000) * (60.0 - dof) / 30.0;
  return 1.960 + (2.000 - 1.960) * std::min(1.0, 60.0 / dof);
}

PairedDifference paired_difference(const std::vector<double>& a, const std::vector<double>& b) {
  PairedDifference d;
  d.mean = d.low = d.high = kNaN;
  const size_t m = std::min(a.size(), b.size());
  double sum = 0.0;
  for (size_t i = 0; i < m; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) continue;
    sum += b[i] - a[i];
    ++d.n;
  }
  if (d.n == 0) return d;
  d.mean = sum / d.n;
  if (d.n < 2) return d;
  double ss = 0.0;
  for (size_t i = 0; i < m; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) continue;
    const double r = b[i] - a[i] - d.mean;
    ss += r * r;
  }
  const double h = t95(d.n - 1) * std::sqrt(ss / (d.n - 1) / d.n);
  d.low = d.mean - h;
  d.high = d.mean + h;
  return d;
}

Trend linear_trend(const std::vector<double>& x, const std::vector<double>& y) {
  Trend t;
  t.slope = t.intercept = t.slope_low = t.slope_high = kNaN;
  const size_t m = std::min(x.size(), y.size());
  double sx = 0.0, sy = 0.0;
  for (size_t i = 0; i < m; ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) continue;
    sx += x[i];
    sy += y[i];
    ++t.n;
  }
  if (t.n < 3) return t;
  const double mx = sx / t.n, my = sy / t.n;
  double sxx = 0.0, sxy = 0.0;
  for (size_t i = 0; i < m; ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) continue;
    sxx += (x[i] - mx) * (x[i] - mx);
    sxy += (x[i] - mx) * (y[i] - my);
  }
  if (!(sxx > 0.0)) return t;
  t.slope = sxy / sxx;
  t.intercept = my - t.slope * mx;
  double sse = 0.0;
  for (size_t i = 0; i < m; ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) continue;
    const double r = y[i] - (t.intercept + t.slope * x[i]);
    sse += r * r;
  }
  const double se = std::sqrt(sse / (t.n - 2) / sxx);
  const double h = t95(t.n - 2) * se;
  t.slope_low = t.slope - h;
  t.slope_high = t.slope + h;
  return t;
}

}  // namespace spillway::stats
