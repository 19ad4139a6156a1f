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

}  // namespace spillway::stats
