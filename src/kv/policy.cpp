#include "spillway/kv/policy.h"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <limits>
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

std::optional<std::string> PolicyOptions::find(std::string_view key) const {
  for (const auto& [k, v] : kind_options)
    if (k == key) return v;
  return std::nullopt;
}

void Policy::plan(int64_t n0, int64_t count, BatchPlan& out) {
  if (n0 != n_next_ || count < 0 || count > max_batch_)
    throw InvalidArgument(
        fmt::format("policy '{}': plan({}, {}) out of order or over the batch limit (next "
                    "token {}, max batch {})",
                    spec(), n0, count, n_next_, max_batch_));
  plan_tokens(n0, count, out);
  n_next_ = n0 + count;
}

void Policy::seek(int64_t n) {
  if (!seekable() || n < n_next_)
    throw InvalidArgument(fmt::format(
        "policy '{}': seek({}) {} (next token {})", spec(), n,
        seekable() ? "goes backwards" : "is not supported: its plans depend on the tokens before",
        n_next_));
  n_next_ = n;
}

void Policy::save(ByteWriter& w) const {
  w.put_string(spec());
  w.put<int64_t>(n_next_);
  w.put<int64_t>(last_mark_);
  save_state(w);
}

void Policy::load(ByteReader& r) {
  const std::string saved = r.get_string("policy spec", 1 << 16);
  if (saved != spec())
    r.fail(fmt::format("the state is of policy '{}', this policy is '{}'", saved, spec()));
  reset();
  const auto next = r.get<int64_t>("policy stream position");
  const auto mark = r.get<int64_t>("policy turn mark");
  // 2^53: far past any stream (a million tokens a second for 285 years), and far from
  // overflowing the arithmetic of positions.
  constexpr int64_t kMaxPosition = int64_t{1} << 53;
  if (next < 0 || mark < 0 || next > kMaxPosition || mark > kMaxPosition)
    r.fail(fmt::format("policy '{}': stream position {} or turn mark {} outside 0..2^53", spec(),
                       next, mark));
  n_next_ = next;
  last_mark_ = mark;
  try {
    load_state(r);
  } catch (...) {
    reset();
    throw;
  }
}

void Policy::reset() {
  n_next_ = 0;
  last_mark_ = 0;
  on_reset();
}

void Policy::mark_turn_start(int64_t n) {
  if (n < n_next_ || n < last_mark_)
    throw InvalidArgument(
        fmt::format("policy '{}': turn mark at stream index {} is behind the stream (next token "
                    "{}, last mark {})",
                    spec(), n, n_next_, last_mark_));
  if (n == last_mark_) return;
  last_mark_ = n;
  on_turn_start(n);
}

std::vector<int64_t> dense_slot_contents(int64_t n_slots, int64_t n_planned) {
  std::vector<int64_t> slots(static_cast<size_t>(n_slots), -1);
  for (int64_t m = 0; m < std::min(n_slots, n_planned); ++m) slots[static_cast<size_t>(m)] = m;
  return slots;
}

std::string policy_usage() {
  std::string s = "valid forms:";
  for (const auto& k : policy_kinds()) {
    s += fmt::format(" {} ({}", k.usage, k.help);
    for (const auto& o : k.option_keys) s += fmt::format("; option {}=", o);
    s += ");";
  }
  s += " options after a comma: positions=cache|absolute, kv=f32|f16|q8_0, local=native|policy";
  return s;
}

int64_t parse_count(std::string_view text, int64_t min, int64_t max, std::string_view what,
                    std::string_view spec) {
  // Some policies keep per-slot metadata from construction on (and one copy per layer):
  // no count above kMaxPolicySlots, whatever the policy's own limit.
  max = std::min(max, kMaxPolicySlots);
  int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size() || v < min || v > max) {
    throw InvalidArgument(
        fmt::format("bad policy spec '{}': {} must be a whole number in [{}, {}], found '{}'; {}",
                    spec, what, min, max, text, policy_usage()));
  }
  return v;
}

void add_slot_mass(const AttentionFeedback& f, int64_t t, std::vector<double>& mass) {
  const TokenPlan& tp = f.plan->tokens[static_cast<size_t>(t)];
  const int64_t span = f.plan->span_size(static_cast<size_t>(t));
  const float* p = f.probs + f.offset[t];
  int64_t k = 0;
  for (int32_t r = tp.range_begin; r < tp.range_end; ++r) {
    const SlotRange& sr = f.plan->ranges[static_cast<size_t>(r)];
    for (int32_t s = sr.begin; s < sr.end; ++s, ++k) {
      double sum = 0;
      for (int64_t h = 0; h < f.n_head; ++h) sum += p[h * span + k];
      mass[static_cast<size_t>(s)] += sum;
    }
  }
}

std::pair<int64_t, int64_t> parse_pair(std::string_view args, std::string_view form,
                                       std::string_view what_a, int64_t min_a,
                                       std::string_view what_b, int64_t min_b,
                                       std::string_view spec) {
  const size_t plus = args.find('+');
  if (plus == std::string_view::npos)
    throw InvalidArgument(
        fmt::format("bad policy spec '{}': expected {}; {}", spec, form, policy_usage()));
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max() / 2;
  return {parse_count(args.substr(0, plus), min_a, kMax, what_a, spec),
          parse_count(args.substr(plus + 1), min_b, kMax, what_b, spec)};
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
  return opts.positions == PositionMode::kAbsolute ? ",positions=absolute" : "";
}

namespace {

const PolicyKind& find_kind(std::string_view spec, std::string_view name, bool has_args) {
  for (const auto& k : policy_kinds()) {
    if (k.name != name) continue;
    if (!has_args && k.usage.find(':') != std::string::npos)
      throw InvalidArgument(fmt::format("bad policy spec '{}': '{}' needs arguments, as in {}; {}",
                                        spec, name, k.usage, policy_usage()));
    if (has_args && k.usage.find(':') == std::string::npos)
      throw InvalidArgument(fmt::format("bad policy spec '{}': '{}' takes no arguments; {}", spec,
                                        name, policy_usage()));
    return k;
  }
  throw InvalidArgument(
      fmt::format("bad policy spec '{}': unknown policy '{}'; {}", spec, name, policy_usage()));
}

}  // namespace

std::string kv_type_suffix(DType t) {
  switch (t) {
    case DType::F16:
      return ",kv=f16";
    case DType::Q8_0:
      return ",kv=q8_0";
    default:
      return "";
  }
}

PolicySpec::PolicySpec() : PolicySpec(std::string_view("full")) {}

PolicySpec::PolicySpec(std::string_view spec) {
  std::vector<std::string_view> parts;
  for (size_t pos = 0;;) {
    const size_t comma = spec.find(',', pos);
    parts.push_back(spec.substr(pos, comma == std::string_view::npos ? comma : comma - pos));
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  std::string_view head = parts[0];
  const size_t colon = head.find(':');
  const std::string_view name = head.substr(0, colon);
  const bool has_args = colon != std::string_view::npos;
  const PolicyKind& kind = find_kind(spec, name, has_args);
  bool saw_positions = false, saw_kv = false, saw_local = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    std::string_view opt = parts[i];
    const size_t eq = opt.find('=');
    std::string_view key = opt.substr(0, eq);
    std::string_view val = eq == std::string_view::npos ? "" : opt.substr(eq + 1);
    const bool kind_key =
        std::find(kind.option_keys.begin(), kind.option_keys.end(), key) != kind.option_keys.end();
    if (key == "positions" && !saw_positions && (val == "cache" || val == "absolute")) {
      options_.positions = val == "cache" ? PositionMode::kCache : PositionMode::kAbsolute;
      saw_positions = true;
    } else if (key == "kv" && !saw_kv && (val == "f32" || val == "f16" || val == "q8_0")) {
      kv_type_ = val == "f32" ? DType::F32 : val == "f16" ? DType::F16 : DType::Q8_0;
      saw_kv = true;
    } else if (key == "local" && !saw_local && (val == "native" || val == "policy")) {
      local_ = val == "native" ? LocalLayers::kNative : LocalLayers::kPolicy;
      saw_local = true;
    } else if (kind_key && eq != std::string_view::npos && !options_.find(key)) {
      options_.kind_options.emplace_back(std::string(key), std::string(val));
    } else {
      throw InvalidArgument(fmt::format("bad policy spec '{}': unknown or repeated option '{}'; {}",
                                        spec, opt, policy_usage()));
    }
  }
  kind_ = kind.name;
  args_ = has_args ? std::string(head.substr(colon + 1)) : std::string();
  // The kind checks its arguments and says what its canonical form is.
  canonical_ = kind.make(args_, options_, PolicyLimits{})->spec();
  canonical_ += kv_type_suffix(kv_type_);
  if (local_ == LocalLayers::kPolicy) canonical_ += ",local=policy";
}

std::unique_ptr<Policy> make_policy(const PolicySpec& spec, const PolicyLimits& limits) {
  if (limits.max_batch < 1)
    throw InvalidArgument(fmt::format("policy '{}': max_batch must be >= 1", spec.str()));
  for (const auto& k : policy_kinds())
    if (k.name == spec.kind()) return k.make(spec.args(), spec.options(), limits);
  throw InvalidArgument(
      fmt::format("policy '{}': kind '{}' is not registered", spec.str(), spec.kind()));
}

}  // namespace spillway::kv
