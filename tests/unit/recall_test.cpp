// Recall probes on the tiny model (analysis/recall.h): the generator is deterministic per
// seed and lays the probe out as documented; inside the window a policy remembers exactly
// what the full cache does; past the reach of every layer's window the first sight makes
// no difference at all.
#include "spillway/analysis/recall.h"

#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway::analysis {
namespace {

const model::Model& tiny() {
  static const auto m = [] {
    test::TinyModelSpec spec;
    spec.tied_output = false;
    return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "recall.gguf"));
  }();
  return *m;
}

std::vector<TokenId> filler(int64_t n) {
  return test::random_tokens(n, 77);
}

TEST(RecallProbe, CopyLayoutIsDeterministicPerSeed) {
  const auto f = filler(600);
  ProbeOptions o;
  o.distance = 100;
  o.span = 8;
  o.lead = 20;
  o.seed = 3;
  const Probe a = make_probe(tiny(), f, o), b = make_probe(tiny(), f, o);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.first_begin, 20);  // the tiny vocabulary adds no BOS
  EXPECT_EQ(a.first_end, 28);
  EXPECT_EQ(a.repeat_begin, 128);
  EXPECT_EQ(a.repeat_end, 136);
  EXPECT_EQ(a.tokens.size(), 136u);
  EXPECT_TRUE(std::equal(a.tokens.begin() + 20, a.tokens.begin() + 28, a.tokens.begin() + 128));
  // The filler around the span is consecutive text of the filler.
  const auto it = std::search(f.begin(), f.end(), a.tokens.begin(), a.tokens.begin() + 20);
  ASSERT_NE(it, f.end());
  EXPECT_TRUE(std::equal(a.tokens.begin() + 28, a.tokens.begin() + 128, it + 20));
  o.seed = 4;
  const Probe c = make_probe(tiny(), f, o);
  EXPECT_NE(std::vector<TokenId>(c.tokens.begin() + 20, c.tokens.begin() + 28),
            std::vector<TokenId>(a.tokens.begin() + 20, a.tokens.begin() + 28));
  // The same seed gives the same span at another distance.
  o.seed = 3;
  o.distance = 300;
  const Probe d = make_probe(tiny(), f, o);
  EXPECT_TRUE(std::equal(a.tokens.begin() + 20, a.tokens.begin() + 28, d.tokens.begin() + 20));
  // Bad options and a filler too short are errors.
  o.distance = 590;
  EXPECT_THROW(make_probe(tiny(), f, o), InvalidArgument);
  o.distance = 10;
  o.span = 1;
  EXPECT_THROW(make_probe(tiny(), f, o), InvalidArgument);
}

TEST(RecallProbe, PasskeyAndLinesAskForTheRightAnswer) {
  const auto f = filler(600);
  const Tokenizer& tok = tiny().tokenizer();
  for (ProbeKind k : {ProbeKind::kPasskey, ProbeKind::kLines}) {
    SCOPED_TRACE(probe_kind_name(k));
    ProbeOptions o;
    o.kind = k;
    o.distance = 120;
    o.lead = 16;
    o.seed = 1;
    const Probe p = make_probe(tiny(), f, o);
    ASSERT_FALSE(p.answer.empty());
    const std::string text = tok.decode(p.tokens, /*keep_control=*/true);
    // The tiny model has a ChatML template: the probe is a user message, then the
    // assistant's header and the first words of the answer.
    const std::string lead_in = k == ProbeKind::kPasskey
                                    ? "The pass key is"
                                    : fmt::format("The REGISTER_CONTENT in line {} is <",
                                                  text[text.rfind("in line ") + 8] - '0');
    EXPECT_TRUE(text.ends_with("<|im_start|>assistant\n" + lead_in)) << text;
    const size_t q = text.find(k == ProbeKind::kPasskey ? "What is the pass key?"
                                                        : "What is the REGISTER_CONTENT in line");
    ASSERT_NE(q, std::string::npos);
    const size_t a = text.find(k == ProbeKind::kPasskey ? "The pass key is " + p.answer
                                                        : "is <" + p.answer + ">");
    ASSERT_NE(a, std::string::npos) << text;
    EXPECT_LT(a, q);
    // At least `distance` tokens between them.
    const std::string between = text.substr(a, q - a);
    EXPECT_GE(static_cast<int64_t>(tok.encode(between).size()), o.distance);
  }
  EXPECT_TRUE(answer_matches(" 12345.", "12345"));
  EXPECT_TRUE(answer_matches("It is <4711> indeed", "4711"));
  EXPECT_FALSE(answer_matches(" 123456", "12345"));
  EXPECT_FALSE(answer_matches("no digits", "12345"));
  // The answer is the first line with text: a leading line break is skipped, what follows
  // the line is not read (a later number cannot count).
  EXPECT_EQ(answer_line("\n 12345.\nThe next line 999"), "\n 12345.");
  EXPECT_EQ(answer_line(" 4711"), " 4711");
  EXPECT_EQ(answer_line("\n\n"), "\n\n");
  EXPECT_FALSE(answer_matches(answer_line(" none here\n12345"), "12345"));
  EXPECT_EQ(parse_probe_kind("lines"), ProbeKind::kLines);
  EXPECT_FALSE(parse_probe_kind("needle").has_value());
}

// A probe inside the window: window:W and sink:S+W remember what full does, bit for bit.
TEST(Recall, InsideTheWindowAPolicyRemembersWhatFullDoes) {
  const auto f = filler(800);
  RecallOptions o;
  o.policies = {kv::PolicySpec("full"), kv::PolicySpec("window:200"), kv::PolicySpec("sink:4+196")};
  o.distances = {16, 64};
  o.seeds = 2;
  o.span = 8;
  o.lead = 20;
  o.chunk = 16;
  o.threads = 1;
  const auto rows = measure_recall(tiny(), f, o);
  ASSERT_EQ(rows.size(), 6u);
  for (size_t i = 0; i < 2; ++i) {
    for (size_t p = 1; p < 3; ++p) {
      const RecallRow &full = rows[i], &other = rows[p * 2 + i];
      EXPECT_EQ(other.distance, full.distance);
      EXPECT_EQ(other.nll_first, full.nll_first) << other.spec;
      EXPECT_EQ(other.nll_repeat, full.nll_repeat) << other.spec;
      EXPECT_EQ(other.recall, full.recall) << other.spec;
      EXPECT_EQ(other.n, 2);
      EXPECT_EQ(other.recall_seeds.size(), 2u);
    }
  }
  EXPECT_EQ(rows[2].kv_slots, 200 + 15);  // a window of 200 and a chunk's ring slack
  EXPECT_FALSE(rows[0].capacity.has_value());
  EXPECT_EQ(rows[2].capacity, 200);
}

// Past the window the repeat's NLL is that of a stream whose first sight was never there.
// "Past the window" is past every layer's window: the keys and values of layer l at
// position p were computed from layer l-1's outputs over p-W+1..p, so the last layer's
// output still depends on tokens up to n_layer * (W - 1) back. A span between W and that
// reach is gone from the cache and yet still (faintly) heard.
TEST(Recall, PastTheWindowTheFirstSightMakesNoDifference) {
  const auto f = filler(800);
  auto repeat_nll = [&](const Probe& p, const std::vector<TokenId>& t, const std::string& spec) {
    PerplexityOptions o;
    o.policy = kv::PolicySpec(spec);
    o.chunk = 16;
    o.threads = 1;
    o.score_from = p.repeat_begin + 1;
    return evaluate_perplexity(tiny(), t, o).nll;
  };
  auto replaced = [](const Probe& p) {  // the first sight replaced by other tokens
    std::vector<TokenId> t = p.tokens;
    const auto other = test::random_tokens(p.first_end - p.first_begin, 5);
    std::copy(other.begin(), other.end(), t.begin() + p.first_begin);
    return t;
  };
  constexpr int64_t kWindow = 100, kLayers = 2;  // the tiny model's layers
  ProbeOptions po;
  po.span = 8;
  po.lead = 20;
  // Out of the cache, within the layers' reach: it still changes the repeat's NLL.
  po.distance = kWindow + 20;
  const Probe near = make_probe(tiny(), f, po);
  EXPECT_NE(repeat_nll(near, near.tokens, "window:100"),
            repeat_nll(near, replaced(near), "window:100"));
  // Beyond the reach: no difference at all, bit for bit ...
  po.distance = kLayers * kWindow + 50;
  const Probe p = make_probe(tiny(), f, po);
  EXPECT_EQ(repeat_nll(p, p.tokens, "window:100"), repeat_nll(p, replaced(p), "window:100"));
  // ... which the full cache does notice (the check can fail).
  EXPECT_NE(repeat_nll(p, p.tokens, "full"), repeat_nll(p, replaced(p), "full"));

  RecallOptions o;
  o.policies = {kv::PolicySpec("window:100")};
  o.distances = {po.distance};
  o.seeds = 1;
  o.span = 8;
  o.lead = 20;
  o.threads = 1;
  const auto rows = measure_recall(tiny(), f, o);
  ASSERT_EQ(rows.size(), 1u);
  const std::vector<float> seen = repeat_nll(p, p.tokens, "window:100");
  double mean = 0;
  for (size_t i = 0; i + 1 < 8; ++i) mean += seen[i];  // the span's targets but the first
  EXPECT_NEAR(rows[0].nll_repeat, mean / 7, 1e-6);
}

// The probes of one seed are one stream up to their recall (the filler starts where the
// largest distance puts it), and measure_recall walks it once: each distance's row is
// what a fresh session on that distance's own probe scores.
TEST(Recall, TheProbesOfOneSeedShareTheirStream) {
  const auto f = filler(800);
  ProbeOptions po;
  po.span = 8;
  po.lead = 20;
  po.reach = 300;
  po.distance = 40;
  const Probe a = make_probe(tiny(), f, po);
  po.distance = 300;
  const Probe b = make_probe(tiny(), f, po);
  ASSERT_LT(a.repeat_begin, b.repeat_begin);
  EXPECT_TRUE(std::equal(a.tokens.begin(), a.tokens.begin() + a.repeat_begin, b.tokens.begin()));
  po.reach = 30;  // below the distance
  EXPECT_THROW(make_probe(tiny(), f, po), InvalidArgument);

  RecallOptions o;
  o.policies = {kv::PolicySpec("window:100"), kv::PolicySpec("tova:100")};
  o.distances = {300, 40, 150};  // any order; walked from the smallest
  o.seeds = 2;
  o.span = 8;
  o.lead = 20;
  o.chunk = 16;
  o.threads = 1;
  const auto rows = measure_recall(tiny(), f, o);
  ASSERT_EQ(rows.size(), 6u);
  for (size_t k = 0; k < rows.size(); ++k) {
    const RecallRow& r = rows[k];
    EXPECT_EQ(r.distance, o.distances[k % 3]);
    double first = 0, repeat = 0;
    for (uint64_t seed = 0; seed < 2; ++seed) {
      ProbeOptions one = po;
      one.reach = 300;
      one.distance = r.distance;
      one.seed = seed;
      const Probe p = make_probe(tiny(), f, one);
      PerplexityOptions e;
      e.policy = o.policies[k / 3];
      e.chunk = 16;
      e.threads = 1;
      const std::vector<float> nll = evaluate_perplexity(tiny(), p.tokens, e).nll;
      // nll[i] scores stream index i + 1; a span's targets are its tokens but the first.
      for (int64_t i = p.first_begin; i + 1 < p.first_end; ++i)
        first += nll[static_cast<size_t>(i)] / 7;
      for (int64_t i = p.repeat_begin; i + 1 < p.repeat_end; ++i)
        repeat += nll[static_cast<size_t>(i)] / 7;
    }
    EXPECT_NEAR(r.nll_first, first / 2, 1e-5) << r.spec << " at " << r.distance;
    EXPECT_NEAR(r.nll_repeat, repeat / 2, 1e-5) << r.spec << " at " << r.distance;
  }
}

TEST(Recall, ChecksItsOptions) {
  const auto f = filler(300);
  RecallOptions o;
  o.policies = {kv::PolicySpec("full")};
  o.distances = {1000};
  EXPECT_THROW(measure_recall(tiny(), f, o), InvalidArgument);  // filler too short
  o.distances = {10};
  o.seeds = 0;
  EXPECT_THROW(measure_recall(tiny(), f, o), InvalidArgument);
  o.seeds = 1;
  o.policies.clear();
  EXPECT_THROW(measure_recall(tiny(), f, o), InvalidArgument);
}

TEST(Recall, EffectiveContextIsWhereRecallStaysBelowOneHalf) {
  std::vector<RecallRow> rows(4);
  const double recall[] = {0.9, 0.4, 0.45, 0.1};
  const int64_t distance[] = {64, 256, 1024, 2048};
  for (size_t i = 0; i < 4; ++i) {
    rows[i].distance = distance[i];
    rows[i].recall = recall[i];
  }
  EXPECT_EQ(effective_context(rows), 256);
  rows[2].recall = 0.6;  // a recovery: memory did not end at 256
  EXPECT_EQ(effective_context(rows), 2048);
  rows[3].recall = 0.5;  // never below at the end: beyond the last distance
  EXPECT_FALSE(effective_context(rows).has_value());
  rows[0].recall = 0.2;  // a dip at close range that recovers is not the end either
  EXPECT_FALSE(effective_context(rows).has_value());
  // accuracy for the answered probes
  for (RecallRow& r : rows) {
    r.kind = ProbeKind::kPasskey;
    r.accuracy = 0.25;
  }
  EXPECT_EQ(effective_context(rows), 64);
}

}  // namespace
}  // namespace spillway::analysis
