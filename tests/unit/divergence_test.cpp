// Divergence from a reference cache (session/perplexity.h): KL and top-1 agreement against
// hand-computed distributions, zero where a policy's cache equals the reference's, and the
// reference's own NLL as its own evaluation gives it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "spillway/model/model.h"
#include "spillway/session/perplexity.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

TEST(Divergence, MatchesTheDefinition) {
  // p = (1/4, 3/4), q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2).
  const float p[2] = {0.0f, std::log(3.0f)}, q[2] = {5.0f, 5.0f};
  const Divergence d = divergence(p, q, 2);
  EXPECT_NEAR(d.kl, 0.25 * std::log(0.5) + 0.75 * std::log(1.5), 1e-7);
  EXPECT_FALSE(d.top1_agree);  // p: index 1; q: a tie, index 0 (the lowest)
  EXPECT_EQ(divergence(p, p, 2).kl, 0.0);
  EXPECT_TRUE(divergence(p, p, 2).top1_agree);
  // Shifting all logits changes no distribution.
  const float p2[2] = {100.0f, 100.0f + std::log(3.0f)};
  EXPECT_NEAR(divergence(p, p2, 2).kl, 0.0, 1e-6);
  // Mass where q has (almost) none: a large KL.
  const float r[3] = {0.0f, 0.0f, 0.0f}, s[3] = {0.0f, 0.0f, -200.0f};
  EXPECT_GT(divergence(r, s, 3).kl, 60.0);
}

class DivergenceModel : public ::testing::Test {
 protected:
  static const model::Model& tiny() {
    static const auto m = [] {
      test::TinyModelSpec spec;
      spec.tied_output = false;
      return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "kl.gguf"));
    }();
    return *m;
  }
  static PerplexityResult run(const std::vector<TokenId>& t, const std::string& spec,
                              const std::string& ref) {
    PerplexityOptions o;
    o.policy = kv::PolicySpec(spec);
    if (!ref.empty()) o.reference = kv::PolicySpec(ref);
    o.chunk = 16;
    o.threads = 1;
    return evaluate_perplexity(tiny(), t, o);
  }
};

TEST_F(DivergenceModel, ZeroWhileTheCacheHoldsWhatTheReferenceHolds) {
  const auto t = test::random_tokens(150, 9);
  const PerplexityResult r = run(t, "window:64", "full");
  ASSERT_EQ(r.kl.size(), static_cast<size_t>(r.tokens));
  ASSERT_EQ(r.top1_agree.size(), r.kl.size());
  EXPECT_EQ(r.reference_spec, "full");
  // Targets 1..64 see the same tokens at the same positions under both caches.
  for (size_t k = 0; k < 63; ++k) {
    EXPECT_EQ(r.kl[k], 0.0f) << "target " << k + 1;
    EXPECT_EQ(r.top1_agree[k], 1) << "target " << k + 1;
  }
  // Past the window the distributions part.
  EXPECT_GT(*std::max_element(r.kl.begin() + 70, r.kl.end()), 1e-4f);
  double mean = 0;
  int64_t agree = 0;
  for (size_t k = 0; k < r.kl.size(); ++k) {
    mean += r.kl[k];
    agree += r.top1_agree[k];
  }
  EXPECT_NEAR(r.kl_mean, mean / static_cast<double>(r.kl.size()), 1e-6);
  EXPECT_DOUBLE_EQ(r.top1_agree_rate,
                   static_cast<double>(agree) / static_cast<double>(r.kl.size()));
  // The reference's own NLL, and the policy's NLLs unchanged by running one.
  EXPECT_NEAR(r.reference_mean_nll, run(t, "full", "").mean_nll, 1e-9);
  EXPECT_EQ(r.nll, run(t, "window:64", "").nll);
  // A policy against itself: no divergence anywhere; without a reference, none reported.
  const PerplexityResult same = run(t, "sink:4+28", "sink:4+28");
  EXPECT_TRUE(std::all_of(same.kl.begin(), same.kl.end(), [](float x) { return x == 0.0f; }));
  EXPECT_EQ(same.top1_agree_rate, 1.0);
  const PerplexityResult none = run(t, "full", "");
  EXPECT_TRUE(none.kl.empty());
  EXPECT_TRUE(std::isnan(none.kl_mean));
}

TEST_F(DivergenceModel, TheRecomputeOracleIsAReferenceToo) {
  const auto t = test::random_tokens(90, 10);
  const PerplexityResult r = run(t, "window:32", "recompute:32");
  EXPECT_EQ(r.reference_spec, "recompute:32");
  // Within the first 32 tokens the oracle's window is the whole stream, as window:32's is.
  for (size_t k = 0; k < 31; ++k) EXPECT_EQ(r.kl[k], 0.0f) << "target " << k + 1;
  EXPECT_GT(r.kl_mean, 0.0);
}

}  // namespace
}  // namespace spillway
