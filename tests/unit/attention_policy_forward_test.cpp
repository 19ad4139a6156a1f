// The policies that read attention on the tiny models: equivalences with the older policies
// (bit for bit), chunked == per-token, the naive rotate-every-step reference over the spans
// the policies chose, and the virtual sink's arithmetic against a softmax with an extra
// zero-value key.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "spillway/model/model.h"
#include "spillway/ops/attention.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using model::Model;

using test::random_tokens;

std::unique_ptr<Model> tiny(DType t, bool gemma = false) {
  test::TinyModelSpec s;
  s.matrix_type = t;
  s.embd_type = t == DType::F32 ? DType::F32 : DType::Q8_0;
  if (gemma) {
    s.architecture = "gemma3";
    s.n_layer = 3;
    s.sliding_window = 10;
    s.swa_pattern = 3;
  }
  return Model::load(test::write_tiny_model(test::temp_dir(), s));
}

std::vector<float> nlls(const Model& m, const std::vector<TokenId>& tokens, const char* spec,
                        int64_t chunk) {
  PerplexityOptions o;
  o.policy = kv::PolicySpec(spec);
  o.chunk = chunk;
  o.threads = 2;
  return evaluate_perplexity(m, tokens, o).nll;
}

TEST(AttentionPolicyForward, EquivalencesHoldBitForBit) {
  auto m = tiny(DType::Q4_1);
  const auto tokens = random_tokens(160, 21);
  EXPECT_EQ(nlls(*m, tokens, "h2o:0+24", 1), nlls(*m, tokens, "window:24", 16));
  EXPECT_EQ(nlls(*m, tokens, "detected:3+21,pick=first", 1), nlls(*m, tokens, "sink:3+21", 16));
  EXPECT_EQ(nlls(*m, tokens, "nullsink:24,calib=const:-inf", 16),
            nlls(*m, tokens, "window:24", 16));
  EXPECT_EQ(nlls(*m, tokens, "tova:500", 1), nlls(*m, tokens, "full", 16));
  // And a finite virtual logit changes the scores once the window moves.
  const auto a = nlls(*m, tokens, "nullsink:24,calib=const:2", 16);
  const auto b = nlls(*m, tokens, "window:24", 16);
  EXPECT_EQ(std::vector<float>(a.begin(), a.begin() + 20),
            std::vector<float>(b.begin(), b.begin() + 20));
  EXPECT_NE(a, b);
}

TEST(AttentionPolicyForward, ChunkedEqualsPerTokenForEveryNewPolicy) {
  for (bool gemma : {false, true}) {
    auto m = tiny(DType::Q8_0, gemma);
    const auto tokens = random_tokens(140, 5);
    for (const char* spec :
         {"h2o:6+18", "tova:24", "detected:2+22", "detected:2+22,pick=first", "nullsink:24",
          "nullsink:24,calib=const:0.5", "h2o:6+18,local=policy", "tova:24,positions=absolute"}) {
      EXPECT_EQ(nlls(*m, tokens, spec, 1), nlls(*m, tokens, spec, 37)) << spec << gemma;
    }
  }
}

// Feeds a session token by token and, per layer, records the stream indices its policy kept.
struct Recorded {
  std::vector<std::vector<float>> logits;                // [n][vocab]
  std::vector<std::vector<std::vector<int64_t>>> spans;  // [n][layer] held after planning n
};

Recorded run_recording(const Model& m, const std::vector<TokenId>& tokens, const char* spec) {
  SessionOptions so;
  so.policy = kv::PolicySpec(spec);
  so.max_batch = 1;
  so.threads = 1;
  Session s(m, so);
  Recorded r;
  for (TokenId t : tokens) {
    s.feed(std::span<const TokenId>(&t, 1));
    r.logits.emplace_back(s.last_logits(), s.last_logits() + m.config().n_vocab);
    std::vector<std::vector<int64_t>> per_layer;
    for (int64_t l = 0; l < m.config().n_layer; ++l) {
      const int g = s.cache().step().group_of_layer[static_cast<size_t>(l)];
      std::vector<int64_t> held;
      for (int64_t x : s.cache().group_policy(g).slot_contents())
        if (x >= 0) held.push_back(x);
      per_layer.push_back(held);
    }
    r.spans.push_back(per_layer);
  }
  return r;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
  return d;
}

TEST(AttentionPolicyForward, ScatteredCachesMatchTheNaiveReference) {
  for (bool gemma : {false, true}) {
    auto m = tiny(DType::F32, gemma);
    const auto tokens = random_tokens(150, 13);
    for (const char* spec :
         {"h2o:5+11", "tova:16", "detected:2+14", "h2o:5+11,positions=absolute"}) {
      const Recorded rec = run_recording(*m, tokens, spec);
      const bool absolute = std::string(spec).find("absolute") != std::string::npos;
      test::NaiveReference ref(*m, 0, -1, absolute);
      ref.set_span_fn([&](int64_t n, int64_t l) {
        return rec.spans[static_cast<size_t>(n)][static_cast<size_t>(l)];
      });
      double worst = 0;
      for (size_t n = 0; n < tokens.size(); ++n)
        worst = std::max(worst, max_abs_diff(rec.logits[n], ref.step(tokens[n])));
      EXPECT_LE(worst, 1e-3) << spec << (gemma ? " gemma3" : " llama");
      // The cache really is scattered: some span is not a run of consecutive tokens.
      bool scattered = false;
      for (const auto& per_layer : rec.spans)
        for (const auto& s : per_layer)
          for (size_t i = 1; i < s.size(); ++i) scattered |= s[i] != s[i - 1] + 1;
      EXPECT_TRUE(scattered) << spec;
    }
  }
}

TEST(AttentionPolicyForward, NullSinkMatchesTheNaiveCalibration) {
  for (bool gemma : {false, true}) {
    auto m = tiny(DType::F32, gemma);
    const auto tokens = random_tokens(120, 4);
    SessionOptions so;
    so.policy = kv::PolicySpec("nullsink:20,calib=first:3");
    so.max_batch = 1;
    Session s(*m, so);
    test::NaiveReference ref(*m, 0, 20, false);
    ref.set_null_sink(3);
    double worst = 0;
    for (TokenId t : tokens) {
      s.feed(std::span<const TokenId>(&t, 1));
      worst = std::max(
          worst,
          max_abs_diff(std::vector<float>(s.last_logits(), s.last_logits() + m->config().n_vocab),
                       ref.step(t)));
    }
    EXPECT_LE(worst, 1e-3) << gemma;
  }
}

TEST(VirtualSink, EqualsASoftmaxWithAnExtraZeroValueKey) {
  const int64_t nh = 4, nkv = 2, hd = 32, n = 300;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> k(static_cast<size_t>(nkv * n * hd)), v(k.size()),
      q(static_cast<size_t>(nh * hd));
  for (auto* a : {&k, &v, &q})
    for (float& x : *a) x = nd(rng);
  const ops::AttentionShape s{nh, nkv, hd, n * hd, DType::F32, 0.2f};
  const ops::KeyRun runs[2] = {{0, 150, q.data()}, {170, 300, q.data()}};
  const float z[nh] = {1.5f, -INFINITY, 4.0f, -1.0f};
  std::vector<float> out(static_cast<size_t>(nh * hd)), scratch(4096);
  for (int64_t g = 0; g < nkv; ++g)
    ops::attend_group(s, g, runs, 2, k.data(), v.data(), out.data(), scratch.data(), nullptr, z);
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / (nh / nkv);
    std::vector<double> sc;
    std::vector<int64_t> slot;
    for (const auto& r : runs)
      for (int32_t j = r.begin; j < r.end; ++j) {
        double d = 0;
        for (int64_t i = 0; i < hd; ++i) d += double(q[h * hd + i]) * k[(g * n + j) * hd + i];
        sc.push_back(d * 0.2);
        slot.push_back(j);
      }
    sc.push_back(z[h]);  // the extra key, value 0
    double mx = -INFINITY, sum = 0;
    for (double x : sc) mx = std::max(mx, x);
    for (double& x : sc) sum += (x = std::exp(x - mx));
    for (int64_t i = 0; i < hd; ++i) {
      double acc = 0;
      for (size_t j = 0; j < slot.size(); ++j) acc += sc[j] / sum * v[(g * n + slot[j]) * hd + i];
      EXPECT_NEAR(out[h * hd + i], acc, 2e-5) << "head " << h << " dim " << i;
    }
  }
}

}  // namespace
}  // namespace spillway

namespace spillway {
namespace {

// sink:S+W written outside the library, through the public policy interface only.
class OutsideSinkPolicy final : public kv::Policy {
 public:
  OutsideSinkPolicy(int64_t s, int64_t w, const kv::PolicyLimits& l)
      : Policy({}, l), s_(s), w_(w), ring_(w + l.max_batch - 1) {}
  std::string spec() const override { return "outside-sink"; }
  int64_t n_slots() const override { return s_ + ring_; }
  std::optional<int64_t> capacity() const override { return s_ + w_; }
  std::vector<int64_t> slot_contents() const override { return {}; }
  std::unique_ptr<Policy> clone() const override {
    return std::make_unique<OutsideSinkPolicy>(*this);
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, kv::BatchPlan& out) override {
    for (int64_t n = n0; n < n0 + count; ++n) {
      kv::TokenPlan t;
      t.stream_index = n;
      t.write_slot = static_cast<int32_t>(n < s_ ? n : s_ + (n - s_) % ring_);
      t.key_pos = n;
      t.range_begin = static_cast<int32_t>(out.ranges.size());
      if (n < s_ + w_) {
        out.ranges.push_back({0, static_cast<int32_t>(n + 1), n});
      } else {
        out.ranges.push_back({0, static_cast<int32_t>(s_), s_ + w_ - 1, true});
        for (int64_t m = n - w_ + 1; m <= n; ++m) {  // one range per token: slow but plain
          const auto slot = static_cast<int32_t>(s_ + (m - s_) % ring_);
          out.ranges.push_back({slot, slot + 1, n});
        }
      }
      t.range_end = static_cast<int32_t>(out.ranges.size());
      out.tokens.push_back(t);
    }
  }

 private:
  int64_t s_, w_, ring_;
};

TEST(CustomPolicy, APolicyFromOutsideTheRegistryRunsLikeTheBuiltIn) {
  auto m = tiny(DType::Q8_0);
  const auto tokens = random_tokens(120, 8);
  PerplexityOptions o;
  o.chunk = 7;
  o.policy = kv::PolicySpec("sink:3+20");
  const auto want = evaluate_perplexity(*m, tokens, o);
  o.policy = kv::PolicySpec("full,kv=f32");
  o.policy_factory = [](const kv::PolicyLimits& l) {
    return std::make_unique<OutsideSinkPolicy>(3, 20, l);
  };
  const auto got = evaluate_perplexity(*m, tokens, o);
  EXPECT_EQ(got.nll, want.nll);
  EXPECT_EQ(got.spec, "outside-sink");
}

}  // namespace
}  // namespace spillway
