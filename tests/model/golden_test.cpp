// The decoders against llama.cpp on the real models (golden files written by
// scripts/make-golden.py: tests/golden/smollm2/ for SmolLM2, tests/golden/gemma3/ for Gemma 3):
// logits at fixed positions of a few prompts, and the perplexity of the first 2,048
// corpus tokens in one context; prefill against decode, chunked against per-token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <ostream>
#include <set>

#include "spillway/model/model.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"

namespace spillway {
namespace {

using nlohmann::json;

json load_json(const std::string& rel) {
  std::ifstream f(test::source_path(rel));
  if (!f) throw std::runtime_error("cannot open " + rel);
  return json::parse(f);
}

// One model and its goldens, with the tolerances measured for it (see kGoldens).
struct Golden {
  std::string name;
  std::string (*model_path)();
  std::string dir;  // golden files
  double logit_tol, mean_logit_tol, lse_tol, nll_tol;
  double tie_margin;  // top-1 may differ where llama.cpp's own top two are this close
};

// How ctest and gtest show a case: by its model, not as the struct's bytes.
void PrintTo(const Golden& g, std::ostream* os) {
  *os << g.name;
}

// Tolerances. Both engines quantize activations to 8-bit blocks before every product, so
// each carries its own rounding noise through the layers: logits of magnitude ~20-40
// differ by a few tenths, and a change of summation order in either engine (a new kernel)
// moves them by as much. The yardstick is DistanceOfBothEnginesFromAnUnroundedReference
// (an f64 forward pass of the dequantized weights, no activation rounding), which checks
// that this engine is no farther from it than llama.cpp is.
//
// Measured with the avx2 kernels and with the avx512-vnni ones (whose attention and norms
// sum in another order), on one machine:
//
// SmolLM2: max |diff| 0.97 / 1.13, mean 0.18 / 0.15, max |logsumexp diff| 0.43 / 0.36;
// top-1 equal at 30 / 28 of 30 positions, top-10 overlap >= 9 at 29 of 30 (8 at one,
// where ranks 9-11 are within the noise). From the unrounded pass (10 positions of the
// prose prompt) this engine (avx2) is 0.15 off on average and llama.cpp 0.20. Top-1 may
// differ where llama.cpp's own top two are within that noise: avx512-vnni flips "code"
// position 37 (llama.cpp's gap 0.12) and "chat" position 8 (0.20); the scalar family
// flips others. Hence a tie margin of 0.3, about the two engines' combined mean error.
//
// Gemma 3 270M reacts far more to the rounding: max |diff| 2.40 / 2.98, mean 0.38 / 0.42,
// max |logsumexp diff| 1.37 / 1.66, top-1 equal at 29 of 30. From the unrounded pass
// this engine (avx2) is 0.21 off on average and llama.cpp 0.32; at "prose" position 17
// llama.cpp is 1.26 off (this engine 0.21), and there its top-1 leads our top-1 by 0.42: a
// flip inside llama.cpp's own error, hence the wider tie margin. The bounds on the worst
// position (3.5, 2.0) only catch gross errors on this model; the mean, the perplexity
// and the per-token NLLs below are the sharp checks.
//
// Over the first 512 corpus tokens (SPILLWAY_GOLDEN_F64_TOKENS=512, avx2), perplexity
// unrounded / this engine / llama.cpp: SmolLM2 21.893 / 22.095 / 22.140, Gemma 3 21.387 /
// 21.795 / 21.554; mean per-token |NLL diff| from the unrounded pass, this engine vs
// llama.cpp: SmolLM2 0.058 vs 0.056, Gemma 3 0.079 vs 0.074. Both engines' activation
// rounding raises perplexity; on Gemma 3 this engine's more (+1.9 % against +0.8 %).
const Golden kGoldens[] = {
    {"smollm2", test::default_model_path, "tests/golden/smollm2", 1.5, 0.35, 0.8, 0.1, 0.3},
    {"gemma3", test::gemma3_model_path, "tests/golden/gemma3", 3.5, 0.5, 2.0, 0.12, 0.6},
};

class GoldenTest : public ::testing::TestWithParam<Golden> {
 protected:
  void SetUp() override {
    SPILLWAY_REQUIRE_FILE(GetParam().model_path());
    auto& slot = models_[GetParam().name];
    if (!slot) slot = model::Model::load(GetParam().model_path());
    model_ = slot.get();
  }
  static void TearDownTestSuite() { models_.clear(); }
  json golden(const std::string& file) const { return load_json(GetParam().dir + "/" + file); }
  static std::map<std::string, std::unique_ptr<model::Model>> models_;
  model::Model* model_ = nullptr;
};
std::map<std::string, std::unique_ptr<model::Model>> GoldenTest::models_;

// Every position's logits for `ids`, fed `chunk` tokens per forward pass.
std::vector<std::vector<float>> all_logits(const model::Model& m, const std::vector<TokenId>& ids,
                                           int64_t chunk) {
  SessionOptions so;
  so.policy = kv::PolicySpec(
      std::getenv("SPILLWAY_GOLDEN_POLICY") ? std::getenv("SPILLWAY_GOLDEN_POLICY") : "full");
  so.max_batch = chunk;
  Session s(m, so);
  std::vector<std::vector<float>> out;
  s.feed(ids, [&](int64_t, const float* l) {
    out.emplace_back(l, l + m.config().n_vocab);
    return true;
  });
  return out;
}

TEST_P(GoldenTest, LogitsMatchLlamaCpp) {
  const Golden& gp = GetParam();
  const json g = golden("logits.json");
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
        EXPECT_LE(want[0] - want[static_cast<size_t>(it - top.begin())], gp.tie_margin)
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
  EXPECT_LE(worst, gp.logit_tol);
  EXPECT_LE(mean_abs, gp.mean_logit_tol);
  EXPECT_LE(worst_lse, gp.lse_tol);
}

TEST_P(GoldenTest, PrefillAndDecodeAgree) {
  const json g = golden("logits.json");
  const auto ids = g["prompts"][0]["ids"].get<std::vector<TokenId>>();
  const auto batched = all_logits(*model_, ids, 64);
  const auto decoded = all_logits(*model_, ids, 1);
  double worst = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    for (size_t k = 0; k < batched[i].size(); ++k)
      worst = std::max(worst, static_cast<double>(std::abs(batched[i][k] - decoded[i][k])));
  std::printf("prefill vs decode: max |logit diff| = %.2e over %zu positions\n", worst, ids.size());
  EXPECT_EQ(worst, 0.0);  // a token gets the same bits in a batch as alone
}

TEST_P(GoldenTest, PerplexityOfTheFirst2048CorpusTokensMatchesLlamaCpp) {
  const json g = golden("ppl.json");
  const auto ids = g["ids"].get<std::vector<TokenId>>();
  PerplexityOptions o;
  o.policy = kv::PolicySpec("full");
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
  EXPECT_LE(mean_abs, GetParam().nll_tol);  // the activation-rounding noise above
}

// Chunked evaluation gives the per-token NLLs bit for bit on the real model too, on a
// stream long enough for Gemma's local windows of 512 to evict (every policy is checked
// this way on the tiny models of the unit tests).
TEST_P(GoldenTest, ChunkedPerplexityEqualsPerToken) {
  const json g = golden("ppl.json");
  auto ids = g["ids"].get<std::vector<TokenId>>();
  ids.resize(560);
  for (const char* spec : {"sink:4+156", "window:160,kv=f16"}) {
    PerplexityOptions one, many;
    one.policy = many.policy = kv::PolicySpec(spec);
    one.chunk = 1;
    many.chunk = 96;
    const auto a = evaluate_perplexity(*model_, ids, one);
    const auto b = evaluate_perplexity(*model_, ids, many);
    ASSERT_EQ(a.nll.size(), b.nll.size());
    for (size_t i = 0; i < a.nll.size(); ++i) ASSERT_EQ(a.nll[i], b.nll[i]) << spec << " " << i;
  }
}

// How far each engine is from products without activation rounding (double precision
// from the dequantized weights): the yardstick for the tolerances above. At the first
// positions of the prose prompt, the mean top-64 logit distance of this engine from the
// unrounded pass must not exceed llama.cpp's by more than a fifth; over the first
// SPILLWAY_GOLDEN_F64_TOKENS corpus tokens (default 128) the same for the per-token NLLs.
// Runs with SPILLWAY_GOLDEN_F64=1 (scripts/test.sh sets it): about 30 s for SmolLM2 and
// 60 s for Gemma 3 on one core. At 128 tokens, avx2 / avx512-vnni kernels: mean |NLL diff|
// from the unrounded pass SmolLM2 0.067 / 0.069 against llama.cpp's 0.066, Gemma 3 0.070 /
// 0.076 against 0.079; top-64 logits SmolLM2 0.154 / 0.162 against 0.201, Gemma 3 0.214 /
// 0.195 against 0.316.
TEST_P(GoldenTest, DistanceOfBothEnginesFromAnUnroundedReference) {
  if (!std::getenv("SPILLWAY_GOLDEN_F64")) GTEST_SKIP() << "set SPILLWAY_GOLDEN_F64=1 to run";
  const json g = golden("logits.json");
  const json& p = g["prompts"][0];
  const auto ids = p["ids"].get<std::vector<TokenId>>();
  const auto ours = all_logits(*model_, ids, 64);
  test::NaiveReference ref(*model_, 0, -1, false);
  ref.set_exact_products(true);
  std::vector<std::vector<float>> exact;
  const size_t upto = p["positions"].back()["pos"].get<size_t>();
  for (size_t i = 0; i <= upto; ++i) exact.push_back(ref.step(ids[i]));
  double sum_ours = 0, sum_lcpp = 0;
  int n = 0;
  for (const auto& pos : p["positions"]) {
    const size_t i = pos["pos"].get<size_t>();
    if (i > upto) break;
    const auto top = pos["top_ids"].get<std::vector<TokenId>>();
    const auto want = pos["top_logits"].get<std::vector<double>>();
    double d_ours = 0, d_lcpp = 0, d_both = 0;
    for (size_t k = 0; k < top.size(); ++k) {
      const double e = exact[i][static_cast<size_t>(top[k])];
      d_ours += std::abs(ours[i][static_cast<size_t>(top[k])] - e) / top.size();
      d_lcpp += std::abs(want[k] - e) / top.size();
      d_both += std::abs(ours[i][static_cast<size_t>(top[k])] - want[k]) / top.size();
    }
    std::printf(
        "%s pos %zu, top-64 mean |diff|: spillway-exact %.3f, llama.cpp-exact %.3f, "
        "spillway-llama.cpp %.3f\n",
        GetParam().name.c_str(), i, d_ours, d_lcpp, d_both);
    sum_ours += d_ours;
    sum_lcpp += d_lcpp;
    ++n;
  }
  ASSERT_GT(n, 0);
  std::printf("%s mean over %d positions: spillway-exact %.3f, llama.cpp-exact %.3f\n",
              GetParam().name.c_str(), n, sum_ours / n, sum_lcpp / n);
  EXPECT_LE(sum_ours, 1.2 * sum_lcpp);

  // Per-token NLLs of the corpus tokens.
  const json pg = golden("ppl.json");
  auto cids = pg["ids"].get<std::vector<TokenId>>();
  const auto lcpp_nll = pg["nll"].get<std::vector<double>>();
  const char* env = std::getenv("SPILLWAY_GOLDEN_F64_TOKENS");
  const size_t nt = std::min<size_t>(env ? std::strtoul(env, nullptr, 10) : 128, cids.size());
  cids.resize(nt);
  PerplexityOptions o;
  o.policy = kv::PolicySpec("full");
  o.chunk = 256;
  const PerplexityResult r = evaluate_perplexity(*model_, cids, o);
  test::NaiveReference cref(*model_, 0, -1, false);
  cref.set_exact_products(true);
  double e_ours = 0, e_lcpp = 0, nll_exact = 0, nll_ours = 0, nll_lcpp = 0;
  for (size_t i = 0; i + 1 < nt; ++i) {
    const std::vector<float> l = cref.step(cids[i]);
    double mx = *std::max_element(l.begin(), l.end()), sum = 0;
    for (float x : l) sum += std::exp(x - mx);
    const double nll = mx + std::log(sum) - l[static_cast<size_t>(cids[i + 1])];
    e_ours += std::abs(r.nll[i] - nll);
    e_lcpp += std::abs(lcpp_nll[i] - nll);
    nll_exact += nll;
    nll_ours += r.nll[i];
    nll_lcpp += lcpp_nll[i];
  }
  const double m = static_cast<double>(nt - 1);
  std::printf(
      "%s first %zu corpus tokens: ppl unrounded %.4f, spillway %.4f, llama.cpp %.4f; mean "
      "|NLL diff| from unrounded: spillway %.4f, llama.cpp %.4f\n",
      GetParam().name.c_str(), nt, std::exp(nll_exact / m), std::exp(nll_ours / m),
      std::exp(nll_lcpp / m), e_ours / m, e_lcpp / m);
  EXPECT_LE(e_ours, 1.2 * e_lcpp);
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest, ::testing::ValuesIn(kGoldens),
                         [](const ::testing::TestParamInfo<Golden>& i) { return i.param.name; });

}  // namespace
}  // namespace spillway
