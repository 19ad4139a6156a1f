// nullsink:W — a window of the last W tokens and no sink tokens, but a virtual sink in every
// query head's softmax once the first tokens are evicted: a logit with no value, which takes
// its share of the probability and gives nothing back (the "attend to nobody" pathway; the
// arithmetic of gpt-oss's learned sinks). The logits come from the model itself:
//   calib=first:S  (default first:4) while tokens 0..S-1 are still cached, each head's
//                  log-sum-exp of its scores on them (the mass the real sinks absorb) is
//                  averaged over the queries that see them; the average is frozen as that
//                  head's logit when token 0 is evicted. One cache per layer (each layer
//                  has its heads' logits); streams are fed one token per step.
//   calib=const:x  the same logit x for every head of every layer (-inf: window:W).
//   fit=FILE       per layer and head a logit and, if the file has them, a value vector,
//                  fitted to the real sink's effect on each head's output
//                  (kv/virtual_sinks.h; `spillway sinks --fit-null FILE`). Nothing is
//                  learned from the stream, so the policy reads no attention and streams
//                  are evaluated in chunks, as window:W is. FILE may not hold a comma.
#include <fmt/core.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <memory>

#include "policies.h"
#include "slot_set.h"
#include "spillway/core/error.h"
#include "spillway/kv/cache.h"
#include "spillway/kv/virtual_sinks.h"

namespace spillway::kv {

namespace {

constexpr int64_t kDefaultCalibTokens = 4;

class NullSinkPolicy final : public Policy {
 public:
  // fitted: fit=FILE (calib_tokens 0); else calib_tokens > 0: calib=first:S, 0: the
  // constant logit.
  NullSinkPolicy(int64_t window, int64_t calib_tokens, float logit,
                 std::shared_ptr<const VirtualSinks> fitted, std::string fit_path,
                 const PolicyOptions& opts, const PolicyLimits& limits)
      : Policy(opts, limits),
        window_(window),
        calib_tokens_(calib_tokens),
        logit_(logit),
        fitted_(std::move(fitted)),
        fit_path_(std::move(fit_path)),
        slots_(window + limits.max_batch - 1) {}

  std::string spec() const override {
    std::string calib;
    if (fitted_)
      calib = ",fit=" + fit_path_;
    else if (calib_tokens_ == 0)
      calib = fmt::format(",calib=const:{}", logit_);
    else if (calib_tokens_ != kDefaultCalibTokens)
      calib = fmt::format(",calib=first:{}", calib_tokens_);
    return fmt::format("nullsink:{}{}{}", window_, calib, options_suffix(options_));
  }
  void check_shape(const CacheShape& shape) const override {
    if (fitted_) check_virtual_sinks_model(*fitted_, shape, fit_path_);
  }
  int64_t n_slots() const override { return slots_.n_slots(); }
  std::optional<int64_t> capacity() const override { return window_; }
  bool wants_attention() const override { return calib_tokens_ > 0 && !frozen_; }
  bool per_layer() const override { return calib_tokens_ > 0; }
  std::vector<int64_t> slot_contents() const override { return slots_.slot_contents(); }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<NullSinkPolicy>(*this); }
  // The heads' virtual logits (empty before they are frozen or for calib=const).
  const std::vector<float>& logits() const { return frozen_logits_; }

  void observe(const AttentionFeedback& f) override {
    if (static_cast<int64_t>(lse_sum_.size()) != f.n_head) {
      lse_sum_.assign(static_cast<size_t>(f.n_head), 0.0);
      lse_count_ = 0;
    }
    for (int64_t t = 0; t < f.n_tokens; ++t) {
      const TokenPlan& tp = f.plan->tokens[static_cast<size_t>(t)];
      // Only queries whose span holds all of tokens 0..S-1, in ranks 0..S-1.
      if (tp.stream_index < calib_tokens_ || tp.stream_index >= window_) continue;
      const int64_t span = f.plan->span_size(static_cast<size_t>(t));
      for (int64_t h = 0; h < f.n_head; ++h) {
        const float* p = f.probs + f.offset[t] + h * span;
        double first = 0;
        for (int64_t k = 0; k < calib_tokens_; ++k) first += p[k];
        // log sum over the first S of exp(score) = lse + log(their probability).
        lse_sum_[static_cast<size_t>(h)] +=
            f.lse[t * f.n_head + h] + std::log(std::max(first, 1e-300));
      }
      ++lse_count_;
    }
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) override {
    for (int64_t n = n0; n < n0 + count; ++n) {
      if (slots_.contains(n - window_)) slots_.evict(n - window_);
      if (n >= window_ && calib_tokens_ > 0 && !frozen_) freeze();
      TokenPlan t;
      t.stream_index = n;
      t.write_slot = slots_.admit(n, out.moves);
      t.key_pos = n;
      t.range_begin = static_cast<int32_t>(out.ranges.size());
      slots_.append_ranges(n, options_.positions, out.ranges);
      t.range_end = static_cast<int32_t>(out.ranges.size());
      // Token 0 is out of the window: the sink joins this token's softmax.
      t.virtual_sink = n >= window_;
      out.tokens.push_back(t);
    }
    if (n0 + count - 1 >= window_) {
      if (fitted_)
        out.fitted_sinks = fitted_;
      else if (calib_tokens_ == 0)
        out.sink_logits.assign(1, logit_);
      else
        out.sink_logits = frozen_logits_;
    }
  }
  void on_reset() override {
    slots_.clear();
    frozen_ = false;
    frozen_logits_.clear();
    lse_sum_.clear();
    lse_count_ = 0;
  }
  void save_state(ByteWriter& w) const override {
    slots_.save(w);
    w.put_bool(frozen_);
    w.put_vector(frozen_logits_);
    w.put_vector(lse_sum_);
    w.put<int64_t>(lse_count_);
  }
  void load_state(ByteReader& r) override {
    constexpr size_t kMaxHeads = 1 << 16;
    slots_.load(r, n_planned());
    frozen_ = r.get_bool("virtual sinks frozen");
    frozen_logits_ = r.get_vector<float>("virtual sink logits", kMaxHeads);
    lse_sum_ = r.get_vector<double>("calibration sums", kMaxHeads);
    lse_count_ = r.get<int64_t>("calibration count");
    if (lse_count_ < 0) r.fail(fmt::format("calibration count {} below 0", lse_count_));
  }

 private:
  void freeze() {
    frozen_ = true;
    frozen_logits_.assign(lse_sum_.size(), -std::numeric_limits<float>::infinity());
    if (lse_count_ == 0) return;  // no query saw the first tokens: no sink (window:W)
    for (size_t h = 0; h < lse_sum_.size(); ++h)
      frozen_logits_[h] = static_cast<float>(lse_sum_[h] / static_cast<double>(lse_count_));
  }

  int64_t window_, calib_tokens_;
  float logit_;
  std::shared_ptr<const VirtualSinks> fitted_;  // shared by clones: never changed
  std::string fit_path_;
  SlotSet slots_;
  bool frozen_ = false;
  std::vector<float> frozen_logits_;  // [n_head]
  std::vector<double> lse_sum_;       // [n_head]
  int64_t lse_count_ = 0;
};

}  // namespace

std::unique_ptr<Policy> make_nullsink_policy(std::string_view args, const PolicyOptions& opts,
                                             const PolicyLimits& limits) {
  const std::string spec = fmt::format("nullsink:{}", args);
  const int64_t w =
      parse_count(args, 1, std::numeric_limits<int32_t>::max() / 2, "W (window)", spec);
  int64_t calib_tokens = kDefaultCalibTokens;
  float logit = 0.0f;
  if (auto fit = opts.find("fit")) {
    if (opts.find("calib"))
      throw InvalidArgument(fmt::format(
          "bad policy spec '{}': calib= and fit= exclude each other (a fitted sink is not "
          "calibrated on the stream); {}",
          spec, policy_usage()));
    if (fit->empty())
      throw InvalidArgument(fmt::format(
          "bad policy spec '{}': fit= needs a file (spillway sinks --fit-null FILE); {}", spec,
          policy_usage()));
    auto sinks = std::make_shared<const VirtualSinks>(load_virtual_sinks(*fit));
    return std::make_unique<NullSinkPolicy>(w, 0, 0.0f, std::move(sinks), *fit, opts, limits);
  }
  if (auto calib = opts.find("calib")) {
    const auto bad = [&] {
      return InvalidArgument(fmt::format(
          "bad policy spec '{}': calib={} (expected calib=first:S, S >= 1, or calib=const:x, x a "
          "number or -inf); {}",
          spec, *calib, policy_usage()));
    };
    if (calib->rfind("first:", 0) == 0) {
      const std::string_view n = std::string_view(*calib).substr(6);
      auto [p, ec] = std::from_chars(n.data(), n.data() + n.size(), calib_tokens);
      if (n.empty() || ec != std::errc() || p != n.data() + n.size() || calib_tokens < 1 ||
          calib_tokens > w)
        throw bad();
    } else if (calib->rfind("const:", 0) == 0) {
      const std::string x = calib->substr(6);
      if (x == "-inf") {
        logit = -std::numeric_limits<float>::infinity();
      } else {
        char* end = nullptr;
        logit = std::strtof(x.c_str(), &end);
        if (x.empty() || end != x.c_str() + x.size() || !std::isfinite(logit)) throw bad();
      }
      calib_tokens = 0;
    } else {
      throw bad();
    }
  }
  return std::make_unique<NullSinkPolicy>(w, calib_tokens, logit, nullptr, "", opts, limits);
}

}  // namespace spillway::kv
