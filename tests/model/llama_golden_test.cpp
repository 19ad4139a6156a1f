// The decoder on the default model against llama.cpp (tests/golden/logits.json and
// ppl.json, written by scripts/make-golden.py): logits at fixed positions, and the
// perplexity of the first 2,048 corpus tokens in one context.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "spillway/model/model.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/paths.h"

namespace spillway {
namespace {

using nlohmann::json;

json load_json(const std::string& rel) {
  std::ifstream f(test::source_path(rel));
  if (!f) throw std::runtime_error("cannot open " + rel);
  return json::parse(f);
}

class LlamaGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::filesystem::exists(test::default_model_path()))
      model_ = model::Model::load(test::default_model_path()).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override { SPILLWAY_REQUIRE_FILE(test::default_model_path()); }
  static model::Model* model_;
};
model::Model* LlamaGolden::model_ = nullptr;

// Every position's logits for `ids`, fed `chunk` tokens per forward pass.
std::vector<std::vector<float>> all_logits(const model::Model& m, const std::vector<TokenId>& ids,
                                           int64_t chunk) {
  SessionOptions so;
  so.policy =
      std::getenv("SPILLWAY_GOLDEN_POLICY") ? std::getenv("SPILLWAY_GOLDEN_POLICY") : "full";
  so.max_batch = chunk;
  Session s(m, so);
  std::vector<std::vector<float>> out;
  s.feed(ids, [&](int64_t, const float* l) {
    out.emplace_back(l, l + m.config().n_vocab);
    return true;
  });
  return out;
}

// Tolerances. Both engines quantize activations to 8-bit blocks before every product, so
// each carries its own rounding noise through 30 layers: logits of magnitude ~20-40
// differ by a few tenths. Against an f64 forward pass of the dequantized weights (no
// activation rounding) at position 0 of the prose prompt, this engine is 0.22 off on the
// top-64 logits and llama.cpp 0.43: the gap is noise on both sides, not a bias. Measured
// here: max |diff| 1.06, mean 0.18, max |logsumexp diff| 0.59, top-1 equal at 29 of 30
// positions, top-10 overlap >= 9 at 29 of 30 (8 at one, where ranks 9-11 are within the
// noise). Top-1 may differ where llama.cpp's own top two are closer than kTieMargin
// ("prose" position 8: 16.8038 vs 16.8018; a change of summation order flips it).
constexpr double kTieMargin = 0.05;
constexpr double kLogitTol = 1.5;
constexpr double kMeanLogitTol = 0.35;
constexpr double kLogSumExpTol = 0.8;

TEST_F(LlamaGolden, LogitsMatchLlamaCpp) {
  const json g = load_json("tests/golden/logits.json");
  double worst = 0, worst_lse = 0, sum_abs = 0;
  int positions = 0, n_diffs = 0, overlap_below_9 = 0, top1_ties = 0;
  for (const auto& p : g["prompts"]) {
    const auto ids = p["ids"].get<std::vector<TokenId>>();
    const auto logits = all_logits(*model_, ids, 64);
    for (const auto& pos : p["positions"]) {
      const size_t i = pos["pos"].get<size_t>();
      const auto top = pos["top_ids"].get<std::vector<TokenId>>();
      const auto want = pos["top_logits"].get<std::vector<double>>();
      const std::vector<float>& row = logits.at(i);
      double w = 0;
      for (size_t k = 0; k < top.size(); ++k) {
        const double diff = std::abs(row[static_cast<size_t>(top[k])] - want[k]);
        w = std::max(w, diff);
        sum_abs += diff;
        ++n_diffs;
      }
      if (std::getenv("SPILLWAY_GOLDEN_VERBOSE"))
        std::printf("%s pos %zu: max |diff| %.4f (top-1 %.3f vs %.3f)\n",
                    p["name"].get<std::string>().c_str(), i, w, row[static_cast<size_t>(top[0])],
                    want[0]);
      worst = std::max(worst, w);
      double mx = *std::max_element(row.begin(), row.end()), sum = 0;
      for (float x : row) sum += std::exp(x - mx);
      worst_lse =
          std::max(worst_lse, std::abs(mx + std::log(sum) - pos["logsumexp"].get<double>()));
      // Our top-1 and top-10 against llama.cpp's.
      std::vector<TokenId> order(row.size());
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + 10, order.end(),
                        [&](TokenId a, TokenId b) { return row[a] > row[b]; });
      // Same top-1, unless llama.cpp itself has a near-tie between its top-1 and ours.
      if (order[0] != top[0]) {
        const auto it = std::find(top.begin(), top.end(), order[0]);
        ASSERT_NE(it, top.end()) << p["name"] << " pos " << i;
        EXPECT_LE(want[0] - want[static_cast<size_t>(it - top.begin())], kTieMargin)
            << p["name"] << " pos " << i << ": top-1 " << order[0] << " vs " << top[0];
        ++top1_ties;
      }
      std::set<TokenId> ours(order.begin(), order.begin() + 10),
          theirs(top.begin(), top.begin() + 10);
      int common = 0;
      for (TokenId t : ours) common += theirs.count(t) ? 1 : 0;
      EXPECT_GE(common, 8) << p["name"] << " pos " << i;
      if (common < 9) ++overlap_below_9;
      ++positions;
    }
  }
  const double mean_abs = sum_abs / n_diffs;
  std::printf(
      "compared %d positions: top-64 logits max |diff| %.4f, mean |diff| %.4f; max "
      "|logsumexp diff| %.4f; top-10 overlap < 9 at %d; top-1 differs (near-tie) at %d\n",
      positions, worst, mean_abs, worst_lse, overlap_below_9, top1_ties);
  EXPECT_GE(positions, 24);
  EXPECT_LE(overlap_below_9, positions / 10);
  EXPECT_LE(top1_ties, positions / 10);
  EXPECT_LE(worst, kLogitTol);
  EXPECT_LE(mean_abs, kMeanLogitTol);
  EXPECT_LE(worst_lse, kLogSumExpTol);
}

TEST_F(LlamaGolden, PrefillAndDecodeAgree) {
  const json g = load_json("tests/golden/logits.json");
  const auto ids = g["prompts"][0]["ids"].get<std::vector<TokenId>>();
  const auto batched = all_logits(*model_, ids, 64);
  const auto decoded = all_logits(*model_, ids, 1);
  double worst = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    for (size_t k = 0; k < batched[i].size(); ++k)
      worst = std::max(worst, static_cast<double>(std::abs(batched[i][k] - decoded[i][k])));
  std::printf("prefill vs decode: max |logit diff| = %.2e over %zu positions\n", worst, ids.size());
  EXPECT_LE(worst, 1e-3);
}

TEST_F(LlamaGolden, PerplexityOfTheFirst2048CorpusTokensMatchesLlamaCpp) {
  const json g = load_json("tests/golden/ppl.json");
  const auto ids = g["ids"].get<std::vector<TokenId>>();
  PerplexityOptions o;
  o.policy = "full";
  o.chunk = 256;
  const PerplexityResult r = evaluate_perplexity(*model_, ids, o);
  const double want = g["ppl"].get<double>();
  std::printf("perplexity %.4f vs llama.cpp %.4f (%.3f%%), %.1f tokens/s\n", r.ppl, want,
              100.0 * (r.ppl - want) / want, r.tokens_per_s);
  EXPECT_EQ(r.tokens, 2047);
  EXPECT_NEAR(r.ppl, want, 0.005 * want);
  // Per token, the NLLs agree too (golden values carry 4 significant digits).
  const auto nll = g["nll"].get<std::vector<double>>();
  double mean_abs = 0;
  for (size_t i = 0; i < nll.size(); ++i) mean_abs += std::abs(r.nll[i] - nll[i]);
  mean_abs /= static_cast<double>(nll.size());
  std::printf("mean |NLL diff| per token = %.4f\n", mean_abs);
  EXPECT_LE(mean_abs, 0.1);  // measured 0.058: the activation-rounding noise above
}

}  // namespace
}  // namespace spillway
