// Order statistics of measurements (timings, ratios, norms). NaN values are left out;
// nothing left gives NaN.
#pragma once

#include <vector>

namespace spillway::stats {

// The middle value; for an even count the mean of the two middle ones.
double median(std::vector<double> v);

// Nearest-rank percentile: the smallest value with at least p % of the values at or below
// it (p in (0, 100]; p outside is clamped to that range).
double percentile(std::vector<double> v, double p);

}  // namespace spillway::stats
