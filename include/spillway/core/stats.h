// Statistics of measurements (timings, ratios, norms): order statistics, and a straight-line
// trend with its confidence interval. NaN values are left out; nothing left gives NaN.
#pragma once

#include <vector>

namespace spillway::stats {

// The middle value; for an even count the mean of the two middle ones.
double median(std::vector<double> v);

// Nearest-rank percentile: the smallest value with at least p % of the values at or below
// it (p in (0, 100]; p outside is clamped to that range).
double percentile(std::vector<double> v, double p);

// Least-squares line y = intercept + slope * x through the points (x[i], y[i]) whose values
// are both finite, with the slope's 95 % confidence interval from Student's t with n - 2
// degrees of freedom (n: the points used). Fewer than 3 points, or all x equal: n as
// counted and NaN for the rest.
struct Trend {
  int n = 0;
  double slope = 0.0, intercept = 0.0;
  double slope_low = 0.0, slope_high = 0.0;  // the 95 % interval
};
Trend linear_trend(const std::vector<double>& x, const std::vector<double>& y);

// The mean of b[i] - a[i] over the pairs whose values are both finite, with its 95 %
// confidence interval from Student's t with n - 1 degrees of freedom (n: the pairs used).
// A paired comparison: two runs scored on the same items. Fewer than 2 pairs: n as
// counted, the mean where there is one, NaN bounds.
struct PairedDifference {
  int n = 0;
  double mean = 0.0;
  double low = 0.0, high = 0.0;  // the 95 % interval
};
PairedDifference paired_difference(const std::vector<double>& a, const std::vector<double>& b);

// The two-sided 95 % quantile of Student's t with `dof` degrees of freedom (dof >= 1).
double t95(int dof);

}  // namespace spillway::stats
