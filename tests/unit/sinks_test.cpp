// Attention statistics and sink analyses on the tiny model: recorded probabilities sum to
// one, aggregation by stream index equals a naive recomputation, alpha_k and the sink rate
// on a hand-built attention matrix, ablating a head's sinks equals a naive forward with
// that head's sink logits at -inf, and an attached observer changes no logit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "spillway/analysis/attention_stats.h"
#include "spillway/analysis/sink_report.h"
#include "spillway/analysis/sinks.h"
#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/model/observer.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"
#include "util/naive_reference.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using analysis::AttentionStats;
using model::Model;

using test::random_tokens;

std::unique_ptr<Model> tiny(DType t, const std::string& arch = "llama") {
  test::TinyModelSpec s;
  s.matrix_type = t;
  s.embd_type = t == DType::F32 ? DType::F32 : DType::Q8_0;
  s.architecture = arch;
  if (arch == "gemma3") {
    s.n_layer = 3;
    s.sliding_window = 10;
    s.swa_pattern = 3;
  }
  return Model::load(test::write_tiny_model(test::temp_dir(), s));
}

// Checks every record's probabilities.
class SumChecker final : public model::AttentionObserver {
 public:
  bool wants_probs(int64_t) override { return true; }
  void on_attention(const model::AttentionRecord& r) override {
    for (int64_t t = 0; t < r.n_tokens; ++t) {
      const int64_t span = r.plan->span_size(static_cast<size_t>(t));
      ASSERT_EQ(r.prob_offset[t + 1] - r.prob_offset[t], r.n_head * span);
      for (int64_t h = 0; h < r.n_head; ++h) {
        double s = 0;
        for (int64_t k = 0; k < span; ++k) {
          const float p = r.probs[r.prob_offset[t] + h * span + k];
          ASSERT_GE(p, 0.0f);
          s += p;
        }
        ASSERT_NEAR(s, 1.0, 1e-5) << "layer " << r.layer << " head " << h;
        ++checked;
      }
    }
  }
  int64_t checked = 0;
};

TEST(AttentionStats, RecordedProbabilitiesSumToOneOverTheSpan) {
  for (const char* arch : {"llama", "gemma3"}) {
    auto m = tiny(DType::Q8_0, arch);
    for (const char* spec : {"full", "sink:2+9", "window:7"}) {
      SessionOptions so;
      so.policy = kv::PolicySpec(spec);
      so.max_batch = 5;
      Session s(*m, so);
      SumChecker check;
      s.set_observer(&check);
      s.advance(random_tokens(40, 1));
      EXPECT_EQ(check.checked, 40 * m->config().n_layer * m->config().n_head) << arch << spec;
    }
  }
}

TEST(AttentionStats, MassByStreamIndexEqualsANaiveRecomputation) {
  auto m = tiny(DType::F32);
  const auto& c = m->config();
  for (const auto& [spec, sinks, window] :
       {std::tuple<const char*, int64_t, int64_t>{"sink:2+9", 2, 9}, {"full", 0, -1}}) {
    const auto tokens = random_tokens(60, 5);
    const int64_t first = 20;
    SessionOptions so;
    so.policy = kv::PolicySpec(spec);
    so.max_batch = 7;
    Session s(*m, so);
    AttentionStats stats(c, {first, 30});
    s.set_observer(&stats);
    s.advance(tokens);
    EXPECT_EQ(stats.n_queries(), 30);

    test::NaiveReference ref(*m, sinks, window, false);
    std::vector<std::vector<double>> want(static_cast<size_t>(c.n_layer * c.n_head),
                                          std::vector<double>(60, 0.0));
    for (int64_t n = 0; n < 60; ++n) {
      ref.step(tokens[static_cast<size_t>(n)]);
      if (n < first || n >= first + 30) continue;
      for (int64_t l = 0; l < c.n_layer; ++l)
        for (int64_t h = 0; h < c.n_head; ++h)
          for (auto [k, p] : ref.last_probs(l, h))
            want[static_cast<size_t>(l * c.n_head + h)][static_cast<size_t>(k)] += p;
    }
    for (int64_t l = 0; l < c.n_layer; ++l) {
      for (int64_t h = 0; h < c.n_head; ++h) {
        const auto& got = stats.mass_by_stream(l, h);
        const auto& w = want[static_cast<size_t>(l * c.n_head + h)];
        double total = 0;
        for (size_t k = 0; k < w.size(); ++k) {
          const double g = k < got.size() ? got[k] : 0.0;
          EXPECT_NEAR(g, w[k], 1e-4) << spec << " layer " << l << " head " << h << " key " << k;
          total += g;
        }
        EXPECT_NEAR(total, 30.0, 1e-3);
        double by_rank = 0;
        for (double x : stats.mass_by_rank(l, h)) by_rank += x;
        EXPECT_NEAR(by_rank, 30.0, 1e-3);
      }
    }
  }
}

// A hand-built step: T tokens, a full causal plan, probabilities given per query.
void feed_matrix(AttentionStats& stats, const std::vector<std::vector<float>>& A, int64_t n_layer,
                 int64_t n_head) {
  const int64_t T = static_cast<int64_t>(A.size());
  kv::StepPlan plan;
  plan.groups.resize(1);
  plan.group_of_layer.assign(static_cast<size_t>(n_layer), 0);
  kv::BatchPlan& bp = plan.groups[0];
  std::vector<float> probs;
  std::vector<int64_t> offset;
  for (int64_t i = 0; i < T; ++i) {
    kv::TokenPlan tp;
    tp.stream_index = i;
    tp.write_slot = static_cast<int32_t>(i);
    tp.key_pos = i;
    tp.range_begin = static_cast<int32_t>(bp.ranges.size());
    bp.ranges.push_back({0, static_cast<int32_t>(i + 1), i});
    tp.range_end = tp.range_begin + 1;
    bp.tokens.push_back(tp);
    offset.push_back(static_cast<int64_t>(probs.size()));
    for (int64_t h = 0; h < n_head; ++h)
      for (int64_t k = 0; k <= i; ++k)
        probs.push_back(A[static_cast<size_t>(i)][static_cast<size_t>(k)] *
                            (h + 1 == n_head ? 0.0f : 1.0f) +
                        (h + 1 == n_head && k == i ? 1.0f : 0.0f));
  }
  offset.push_back(static_cast<int64_t>(probs.size()));
  std::vector<float> kv_rows(static_cast<size_t>(T * 2), 1.0f);
  stats.on_step(plan);
  for (int64_t l = 0; l < n_layer; ++l) {
    model::AttentionRecord r;
    r.layer = l;
    r.plan = &bp;
    r.n_tokens = T;
    r.n_head = n_head;
    r.n_head_kv = 1;
    r.head_dim = 2;
    r.probs = probs.data();
    r.prob_offset = offset.data();
    r.k_rows = kv_rows.data();
    r.v_rows = kv_rows.data();
    stats.on_attention(r);
  }
}

TEST(SinkScores, AlphaAndSinkRateOnAHandBuiltMatrix) {
  // 4 queries; head 0 puts 0.7, 0.5, 0.4, 0.1 on token 0 and the rest on the diagonal;
  // head 1 (the last) attends only to itself.
  const std::vector<std::vector<float>> A = {
      {1.0f}, {0.5f, 0.5f}, {0.4f, 0.0f, 0.6f}, {0.1f, 0.3f, 0.3f, 0.3f}};
  model::ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_head_kv = 1;
  c.head_dim = 2;
  AttentionStats stats(c);
  feed_matrix(stats, A, 2, 2);
  // alpha_0 = mean over queries 0..3 of A[i][0] = (1 + 0.5 + 0.4 + 0.1) / 4 = 0.5.
  EXPECT_NEAR(stats.alpha(0, 0, 0), 0.5, 1e-6);
  // alpha_1 = mean over queries 1..3 of A[i][1] = (0.5 + 0 + 0.3) / 3.
  EXPECT_NEAR(stats.alpha(1, 0, 1), 0.8 / 3, 1e-6);
  EXPECT_NEAR(stats.alpha(0, 0, 3), 0.3, 1e-6);
  // Head 1: itself only: alpha_0 = 1/4 (query 0 attends to token 0 = itself).
  EXPECT_NEAR(stats.alpha(0, 1, 0), 0.25, 1e-6);
  EXPECT_TRUE(std::isnan(stats.alpha(0, 0, 4)));
  const auto scores = analysis::sink_scores(stats, 0);
  ASSERT_EQ(scores.size(), 4u);
  EXPECT_DOUBLE_EQ(analysis::sink_rate(scores, 0.3), 50.0);
  EXPECT_DOUBLE_EQ(analysis::sink_rate(scores, 0.2), 100.0);
  EXPECT_DOUBLE_EQ(analysis::sink_rate(scores, 0.6), 0.0);
  EXPECT_THROW(analysis::sink_rate(scores, 0.0), InvalidArgument);
  EXPECT_THROW(analysis::sink_rate(scores, 1.5), InvalidArgument);
}

TEST(SinkScores, RanksAndSpearman) {
  EXPECT_EQ(analysis::ranks(std::vector<double>{3, 1, 2, 1}),
            (std::vector<double>{4, 1.5, 3, 1.5}));
  {
    const double nan = std::nan("");
    const auto r = analysis::ranks(std::vector<double>{3, nan, 1, 2, nan, 1});
    ASSERT_EQ(r.size(), 6u);
    EXPECT_EQ(r[0], 4.0);
    EXPECT_TRUE(std::isnan(r[1]));
    EXPECT_EQ(r[2], 1.5);
    EXPECT_EQ(r[3], 3.0);
    EXPECT_TRUE(std::isnan(r[4]));
    EXPECT_EQ(r[5], 1.5);
  }
  const std::vector<double> a = {1, 2, 3, 4, 5};
  EXPECT_NEAR(analysis::spearman(a, std::vector<double>{10, 20, 30, 40, 50}), 1.0, 1e-12);
  EXPECT_NEAR(analysis::spearman(a, std::vector<double>{5, 4, 3, 2, 1}), -1.0, 1e-12);
  EXPECT_NEAR(analysis::spearman(a, std::vector<double>{1, 4, 9, 16, 1000}), 1.0, 1e-12);
  EXPECT_TRUE(std::isnan(analysis::spearman(a, std::vector<double>{1, 1, 1, 1, 1})));
  EXPECT_NEAR(
      analysis::spearman(std::vector<double>{1, 2, NAN, 3}, std::vector<double>{3, 2, 7, 1}), -1.0,
      1e-12);
  EXPECT_EQ(analysis::top_indices(std::vector<double>{0.1, NAN, 0.5, 0.5}, 3),
            (std::vector<int64_t>{2, 3, 0}));
}

// Drops the sinks of some heads.
class Dropper final : public model::AttentionObserver {
 public:
  Dropper(int64_t n_layer, int64_t n_head)
      : edits_(static_cast<size_t>(n_layer)), n_head_(n_head) {}
  void drop(int64_t l, int64_t h) {
    auto& d = edits_[static_cast<size_t>(l)].sinks;
    d.resize(static_cast<size_t>(n_head_), model::SinkEdit::kNone);
    d[static_cast<size_t>(h)] = model::SinkEdit::kDrop;
  }
  const model::AttentionEdit* edit(int64_t l) override {
    return edits_[static_cast<size_t>(l)].sinks.empty() ? nullptr : &edits_[static_cast<size_t>(l)];
  }

 private:
  std::vector<model::AttentionEdit> edits_;
  int64_t n_head_;
};

double max_abs_diff(const float* a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < b.size(); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
  return d;
}

TEST(SinkAblation, DroppingAHeadsSinksEqualsTheNaiveForwardWithoutThem) {
  auto m = tiny(DType::F32);
  const auto tokens = random_tokens(120, 8);
  for (int chunk : {1, 6}) {
    test::NaiveReference ref(*m, 2, 16, false);
    ref.drop_sinks(1, 3);  // layer 1, head 3
    ref.drop_sinks(0, 0);
    SessionOptions so;
    so.policy = kv::PolicySpec("sink:2+16");
    so.max_batch = chunk;
    so.threads = 2;
    Session s(*m, so);
    Dropper drop(m->config().n_layer, m->config().n_head);
    drop.drop(1, 3);
    drop.drop(0, 0);
    s.set_observer(&drop);
    double worst = 0;
    std::vector<std::vector<float>> got;
    for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(chunk)) {
      const size_t cnt = std::min(tokens.size() - i, static_cast<size_t>(chunk));
      s.feed(std::span(tokens).subspan(i, cnt), [&](int64_t, const float* l) {
        got.emplace_back(l, l + m->config().n_vocab);
        return true;
      });
    }
    for (size_t n = 0; n < tokens.size(); ++n)
      worst = std::max(worst, max_abs_diff(got[n].data(), ref.step(tokens[n])));
    EXPECT_LE(worst, 1e-3) << "chunk " << chunk;
  }
  // And the edit does change the output once the sinks are separate.
  SessionOptions so;
  so.policy = kv::PolicySpec("sink:2+16");
  Session a(*m, so), b(*m, so);
  Dropper drop(m->config().n_layer, m->config().n_head);
  drop.drop(1, 3);
  b.set_observer(&drop);
  a.advance(std::span(tokens).first(60));
  b.advance(std::span(tokens).first(60));
  const TokenId next[1] = {tokens[60]};
  a.feed(next);
  b.feed(next);
  EXPECT_GT(
      max_abs_diff(a.last_logits(),
                   std::vector<float>(b.last_logits(), b.last_logits() + m->config().n_vocab)),
      1e-5);
}

TEST(AttentionStats, AnAttachedObserverChangesNoLogit) {
  auto m = tiny(DType::Q4_1);
  const auto tokens = random_tokens(100, 4);
  for (const char* spec : {"full", "sink:4+20"}) {
    PerplexityOptions po;
    po.policy = kv::PolicySpec(spec);
    po.chunk = 9;
    const auto plain = evaluate_perplexity(*m, tokens, po);
    SessionOptions so;
    so.policy = kv::PolicySpec(spec);
    so.max_batch = 9;
    Session s(*m, so);
    AttentionStats stats(m->config());
    s.set_observer(&stats);
    std::vector<float> nll;
    s.feed(std::span(tokens).first(99), [&](int64_t i, const float* l) {
      nll.push_back(static_cast<float>(
          token_nll(l, m->config().n_vocab, tokens[static_cast<size_t>(i + 1)])));
      return true;
    });
    ASSERT_EQ(nll.size(), plain.nll.size());
    for (size_t i = 0; i < nll.size(); ++i) ASSERT_EQ(nll[i], plain.nll[i]) << spec << " " << i;
    EXPECT_EQ(stats.n_queries(), 99);
  }
}

TEST(SinkAblation, RunsEveryHeadAndChecksItsInput) {
  auto m = tiny(DType::Q8_0);
  const auto tokens = random_tokens(80, 3);
  analysis::AblationOptions o;
  o.policy = kv::PolicySpec("sink:2+20");
  o.score_from = 40;
  o.chunk = 8;
  const auto r = analysis::ablate_sinks(*m, tokens, o);
  const auto& c = m->config();
  EXPECT_EQ(r.scored, 40);
  ASSERT_EQ(r.head_delta.size(), static_cast<size_t>(c.n_layer * c.n_head));
  ASSERT_EQ(r.layer_delta.size(), static_cast<size_t>(c.n_layer));
  for (double d : r.head_delta) EXPECT_FALSE(std::isnan(d));
  for (double x : r.sink_mass) {
    EXPECT_GE(x, 0.0);
    EXPECT_LE(x, 1.0);
  }
  // The baseline equals a plain perplexity run over the same targets.
  PerplexityOptions po;
  po.policy = kv::PolicySpec("sink:2+20");
  po.score_from = 40;
  po.chunk = 8;
  EXPECT_NEAR(evaluate_perplexity(*m, tokens, po).mean_nll, r.base_nll, 1e-9);

  o.score_from = 20;  // the window is not full before it
  EXPECT_THROW(analysis::ablate_sinks(*m, tokens, o), InvalidArgument);
  o.score_from = 40;
  o.policy = kv::PolicySpec("window:20");
  EXPECT_THROW(analysis::ablate_sinks(*m, tokens, o), InvalidArgument);
  o.policy = kv::PolicySpec("sink:2+20");
  o.heads = {{0, c.n_head}};
  EXPECT_THROW(analysis::ablate_sinks(*m, tokens, o), InvalidArgument);
  o.heads = {};
  o.layers = {c.n_layer};
  EXPECT_THROW(analysis::ablate_sinks(*m, tokens, o), InvalidArgument);
}

// The report is its parts: the same scores as a recording of its own, shares that sum to
// one per layer, sinks detected by the scores, the layers' own windows; and it refuses
// what it cannot report.
TEST(SinkReport, AgreesWithItsOwnRecordingAndChecksItsInput) {
  for (const char* arch : {"llama", "gemma3"}) {
    SCOPED_TRACE(arch);
    const auto m = tiny(DType::Q4_1, arch);
    const std::vector<TokenId> stream = random_tokens(48, 5);
    analysis::SinkReportOptions o;
    o.policy = kv::PolicySpec("sink:2+20");
    o.tokens = 40;
    o.eps = 0.1;
    o.threads = 1;
    const analysis::SinkReport r = analysis::sink_report(*m, stream, o);
    const int64_t L = m->config().n_layer, H = m->config().n_head;
    ASSERT_EQ(r.n_layer, L);
    EXPECT_EQ(r.tokens, 40);
    EXPECT_EQ(r.first_tokens, 40);

    SessionOptions so;
    so.policy = kv::PolicySpec(o.policy);
    so.threads = 1;
    Session s(*m, so);
    AttentionStats stats(m->config(), {0, 40, true, 16});
    s.set_observer(&stats);
    s.advance(std::span(stream).first(40));
    EXPECT_EQ(r.alpha1, analysis::sink_scores(stats, 0));
    EXPECT_EQ(r.sink_rate_stream, analysis::sink_rate(r.alpha1, 0.1));
    ASSERT_EQ(r.alpha_k.size(), 7u);
    EXPECT_EQ(r.alpha_k[2], analysis::sink_scores(stats, 3));
    for (int64_t k = 0; k < 20; ++k) {
      const auto a = analysis::sink_scores(stats, k);
      const bool over = std::any_of(a.begin(), a.end(), [](double x) { return x > 0.1; });
      const bool listed =
          std::any_of(r.detected_sinks.begin(), r.detected_sinks.end(),
                      [&](const analysis::DetectedSink& d) { return d.stream_index == k; });
      EXPECT_EQ(over, listed) << "stream index " << k;
    }
    ASSERT_EQ(r.layers.size(), static_cast<size_t>(L));
    ASSERT_EQ(r.hidden_norm.size(), static_cast<size_t>(L + 1));
    for (int64_t l = 0; l < L; ++l) {
      const auto& row = r.mass_by_stream[static_cast<size_t>(l)];
      EXPECT_NEAR(std::accumulate(row.begin(), row.end(), 0.0), 1.0, 1e-6);
      const auto& lr = r.layers[static_cast<size_t>(l)];
      EXPECT_EQ(lr.local_window, m->config().layers[static_cast<size_t>(l)].window);
      EXPECT_EQ(lr.alpha1_mean, analysis::layer_mean(r.alpha1, l, H));
      ASSERT_EQ(lr.top_stream.size(), 3u);
      EXPECT_EQ(lr.top_stream[0].second, *std::max_element(row.begin(), row.end()));
      EXPECT_EQ(lr.key0_cos_mean_key.size(), static_cast<size_t>(m->config().n_head_kv));
      EXPECT_EQ(lr.first_token_norm_ratio, stats.hidden_norm(l, 0) / lr.hidden_norm_median);
    }
  }
  const auto m = tiny(DType::Q4_1);
  const std::vector<TokenId> stream = random_tokens(20, 6);
  analysis::SinkReportOptions o;
  o.tokens = 21;
  EXPECT_THROW(analysis::sink_report(*m, stream, o), InvalidArgument);  // longer than the stream
  o.tokens = 20;
  o.eps = 0;
  EXPECT_THROW(analysis::sink_report(*m, stream, o), InvalidArgument);
  o.eps = 0.3;
  o.policy = kv::PolicySpec("recompute:8");
  EXPECT_THROW(analysis::sink_report(*m, stream, o), InvalidArgument);
}

}  // namespace
}  // namespace spillway
