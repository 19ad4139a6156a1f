#include "spillway/kv/policy.h"

#include <fmt/core.h>

#include <charconv>
#include <vector>

#include "policies.h"
#include "spillway/core/error.h"

namespace spillway::kv {

int64_t BatchPlan::span_size(size_t i) const {
  int64_t n = 0;
  const TokenPlan& t = tokens.at(i);
  for (int32_t r = t.range_begin; r < t.range_end; ++r) n += ranges[r].end - ranges[r].begin;
  return n;
}

std::string policy_usage() {
  std::string s = "valid forms:";
  for (const auto& k : policy_kinds()) s += fmt::format(" {} ({});", k.usage, k.help);
  s += " options after a comma: positions=cache|absolute, kv=f32|f16";
  return s;
}

int64_t parse_count(std::string_view text, int64_t min, int64_t max, std::string_view what,
                    std::string_view spec) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size() || v < min || v > max) {
    throw InvalidArgument(
        fmt::format("bad policy spec '{}': {} must be a whole number in [{}, {}], found '{}'; {}",
                    spec, what, min, max, text, policy_usage()));
  }
  return v;
}

void append_dense_plan(int64_t n0, int64_t count, BatchPlan& out) {
  for (int64_t n = n0; n < n0 + count; ++n) {
    TokenPlan t;
    t.stream_index = n;
    t.write_slot = static_cast<int32_t>(n);
    t.key_pos = n;
    t.range_begin = static_cast<int32_t>(out.ranges.size());
    out.ranges.push_back({0, static_cast<int32_t>(n + 1), n});
    t.range_end = t.range_begin + 1;
    out.tokens.push_back(t);
  }
}

std::string options_suffix(const PolicyOptions& opts) {
  std::string s;
  if (opts.positions == PositionMode::kAbsolute) s += ",positions=absolute";
  if (opts.kv_type == DType::F16) s += ",kv=f16";
  return s;
}

std::unique_ptr<Policy> make_policy(std::string_view spec, const PolicyLimits& limits) {
  if (limits.max_batch < 1)
    throw InvalidArgument(fmt::format("policy '{}': max_batch must be >= 1", spec));
  std::vector<std::string_view> parts;
  for (size_t pos = 0;;) {
    const size_t comma = spec.find(',', pos);
    parts.push_back(spec.substr(pos, comma == std::string_view::npos ? comma : comma - pos));
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  std::string_view head = parts[0];
  PolicyOptions opts;
  bool saw_positions = false, saw_kv = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    std::string_view opt = parts[i];
    const size_t eq = opt.find('=');
    std::string_view key = opt.substr(0, eq);
    std::string_view val = eq == std::string_view::npos ? "" : opt.substr(eq + 1);
    if (key == "positions" && !saw_positions && (val == "cache" || val == "absolute")) {
      opts.positions = val == "cache" ? PositionMode::kCache : PositionMode::kAbsolute;
      saw_positions = true;
    } else if (key == "kv" && !saw_kv && (val == "f32" || val == "f16")) {
      opts.kv_type = val == "f32" ? DType::F32 : DType::F16;
      saw_kv = true;
    } else {
      throw InvalidArgument(fmt::format("bad policy spec '{}': unknown or repeated option '{}'; {}",
                                        spec, opt, policy_usage()));
    }
  }
  const size_t colon = head.find(':');
  std::string_view name = head.substr(0, colon);
  std::string_view args = colon == std::string_view::npos ? "" : head.substr(colon + 1);
  for (const auto& k : policy_kinds()) {
    if (k.name != name) continue;
    if (colon == std::string_view::npos && k.usage.find(':') != std::string::npos)
      throw InvalidArgument(fmt::format("bad policy spec '{}': '{}' needs arguments, as in {}; {}",
                                        spec, name, k.usage, policy_usage()));
    if (colon != std::string_view::npos && k.usage.find(':') == std::string::npos)
      throw InvalidArgument(fmt::format("bad policy spec '{}': '{}' takes no arguments; {}", spec,
                                        name, policy_usage()));
    return k.make(args, opts, limits);
  }
  throw InvalidArgument(
      fmt::format("bad policy spec '{}': unknown policy '{}'; {}", spec, name, policy_usage()));
}

}  // namespace spillway::kv
