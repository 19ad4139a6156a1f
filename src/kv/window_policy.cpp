// window:W — a plain sliding window of the last W tokens: the sinks get evicted.
#include <fmt/core.h>

#include <limits>

#include "policies.h"

namespace spillway::kv {

std::unique_ptr<Policy> make_window_policy(std::string_view args, const PolicyOptions& opts,
                                           const PolicyLimits& limits) {
  const int64_t w = parse_count(args, 1, std::numeric_limits<int32_t>::max() / 2, "W (window)",
                                fmt::format("window:{}", args));
  return std::make_unique<SinkWindowPolicy>("window", 0, w, opts, limits);
}

}  // namespace spillway::kv
