// libFuzzer target for the policy-spec parser and the policies it makes: the input is
// "SPEC\0SCRIPT". Any spec must parse or throw spillway::Error; a policy that is made
// plans a short scripted stream (batch sizes, turn marks, uniform attention feedback for
// the policies that ask for it) and every plan must stay inside the policy's slots.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/kv/policy.h"

namespace {

void check_plan(const spillway::kv::Policy& p, const spillway::kv::BatchPlan& plan) {
  const int64_t n_slots = p.n_slots();
  for (const auto& t : plan.tokens) {
    if (t.write_slot < 0 || t.write_slot >= n_slots) __builtin_trap();
    if (t.range_begin < 0 || t.range_end < t.range_begin ||
        t.range_end > static_cast<int32_t>(plan.ranges.size()))
      __builtin_trap();
  }
  for (const auto& r : plan.ranges)
    if (r.begin < 0 || r.end < r.begin || r.end > n_slots) __builtin_trap();
  for (const auto& m : plan.moves)
    if (m.from < 0 || m.from >= n_slots || m.to < 0 || m.to >= n_slots) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string_view text = in.substr(0, nul);
  const std::string_view script = nul == std::string_view::npos ? "" : in.substr(nul + 1);
  try {
    const spillway::kv::PolicySpec spec(text);
    // Re-parsing the canonical text must give the same canonical text.
    if (spillway::kv::PolicySpec(spec.str()).str() != spec.str()) __builtin_trap();
    spillway::kv::PolicyLimits limits;
    limits.max_batch = script.empty() ? 1 : 1 + static_cast<uint8_t>(script[0]) % 16;
    auto policy = spillway::kv::make_policy(spec, limits);
    // Very large caches are legal specs; planning a stream through them is not the
    // parser's business and would only measure memory.
    if (policy->n_slots() > (1 << 16)) return 0;
    spillway::kv::BatchPlan plan;
    std::vector<float> probs;
    std::vector<int64_t> offset;
    std::vector<double> lse;
    int64_t n = 0;
    for (size_t i = 1; i < script.size() && n < 4096; ++i) {
      const auto c = static_cast<uint8_t>(script[i]);
      if (c >= 0xf0) {
        policy->mark_turn_start(n);
        continue;
      }
      if (c == 0xef) {
        policy->reset();
        n = 0;
        continue;
      }
      const int64_t count = 1 + c % limits.max_batch;
      plan.clear();
      policy->plan(n, count, plan);
      check_plan(*policy, plan);
      n += count;
      if (policy->wants_attention()) {
        constexpr int64_t kHeads = 2;
        offset.assign(1, 0);
        probs.clear();
        for (size_t t = 0; t < plan.tokens.size(); ++t) {
          const int64_t span = plan.span_size(t);
          for (int64_t k = 0; k < kHeads * span; ++k)
            probs.push_back(span > 0 ? 1.0f / static_cast<float>(span) : 0.0f);
          offset.push_back(static_cast<int64_t>(probs.size()));
        }
        lse.assign(plan.tokens.size() * kHeads, 0.0);
        spillway::kv::AttentionFeedback fb;
        fb.plan = &plan;
        fb.n_tokens = static_cast<int64_t>(plan.tokens.size());
        fb.n_head = kHeads;
        fb.probs = probs.data();
        fb.offset = offset.data();
        fb.lse = lse.data();
        policy->observe(fb);
      }
    }
    auto copy = policy->clone();
    (void)copy->slot_contents();
  } catch (const spillway::Error&) {
  }
  return 0;
}
