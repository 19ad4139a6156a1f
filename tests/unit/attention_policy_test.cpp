// The policies that read attention (h2o, tova, detected, nullsink), on scripted streams
// with hand-written attention and hand-worked expected tables of slots, moves, ranges and
// query positions; and their spec errors.
#include <gtest/gtest.h>

#include <cmath>

#include "spillway/core/error.h"
#include "spillway/kv/policy.h"

namespace spillway::kv {
namespace {

struct Step {
  BatchPlan plan;
};

// Plans token n alone and hands the policy one head's attention over its span (and the
// log-sum-exp of its scores).
BatchPlan step(Policy& p, int64_t n, std::vector<float> probs, double lse = 0.0) {
  BatchPlan plan;
  p.plan(n, 1, plan);
  if (p.wants_attention()) {
    EXPECT_EQ(static_cast<int64_t>(probs.size()), plan.span_size(0)) << "token " << n;
    const int64_t offset[2] = {0, static_cast<int64_t>(probs.size())};
    AttentionFeedback f;
    f.plan = &plan;
    f.n_tokens = 1;
    f.n_head = 1;
    f.probs = probs.data();
    f.offset = offset;
    f.lse = &lse;
    p.observe(f);
  }
  return plan;
}

std::vector<std::tuple<int32_t, int32_t, int64_t, bool>> ranges(const BatchPlan& p) {
  std::vector<std::tuple<int32_t, int32_t, int64_t, bool>> r;
  for (const SlotRange& s : p.ranges) r.emplace_back(s.begin, s.end, s.query_pos, s.sink);
  return r;
}

using R = std::tuple<int32_t, int32_t, int64_t, bool>;

TEST(H2oPolicy, EvictsTheLightestTokenOutsideTheWindow) {
  auto p = make_policy(kv::PolicySpec("h2o:1+2"));
  EXPECT_EQ(p->spec(), "h2o:1+2");
  EXPECT_EQ(*p->capacity(), 3);
  EXPECT_TRUE(p->wants_attention());
  EXPECT_TRUE(p->per_layer());
  step(*p, 0, {1.0f});                            // scores 0:1
  step(*p, 1, {0.9f, 0.1f});                      // 0:1.9 1:0.1
  step(*p, 2, {0.2f, 0.3f, 0.5f});                // 0:2.1 1:0.4 2:0.5
  BatchPlan b = step(*p, 3, {0.1f, 0.6f, 0.3f});  // 1 evicted (lighter than 0)
  // Token 0 moves out of the ring slot 0 into 1's free slot; token 3 takes slot 0.
  ASSERT_EQ(b.moves.size(), 1u);
  EXPECT_EQ(b.moves[0].from, 0);
  EXPECT_EQ(b.moves[0].to, 1);
  EXPECT_EQ(b.tokens[0].write_slot, 0);
  // Span 0, 2, 3 at ranks 0, 1, 2; query at rank 2: runs (slot range, query position).
  EXPECT_EQ(ranges(b), (std::vector<R>{{1, 2, 2, false}, {2, 3, 3, false}, {0, 1, 3, false}}));
  // Scores 0:2.2 2:1.1 3:0.3 -> token 2 goes; 0 moves from slot 1 to slot 2.
  b = step(*p, 4, {0.2f, 0.3f, 0.5f});
  ASSERT_EQ(b.moves.size(), 1u);
  EXPECT_EQ(b.moves[0].from, 1);
  EXPECT_EQ(b.moves[0].to, 2);
  EXPECT_EQ(b.tokens[0].write_slot, 1);
  EXPECT_EQ(ranges(b), (std::vector<R>{{2, 3, 2, false}, {0, 2, 4, false}}));
  EXPECT_EQ(p->slot_contents(), (std::vector<int64_t>{3, 4, 0}));
}

TEST(TovaPolicy, EvictsWhatTheLatestQueryAttendedToLeast) {
  auto p = make_policy(kv::PolicySpec("tova:2"));
  step(*p, 0, {1.0f});
  step(*p, 1, {0.7f, 0.3f});
  BatchPlan b = step(*p, 2, {0.2f, 0.8f});  // 1 evicted; 0 moves to slot 1
  ASSERT_EQ(b.moves.size(), 1u);
  EXPECT_EQ(b.moves[0].from, 0);
  EXPECT_EQ(b.moves[0].to, 1);
  EXPECT_EQ(ranges(b), (std::vector<R>{{1, 2, 1, false}, {0, 1, 2, false}}));
  b = step(*p, 3, {0.5f, 0.5f});  // 0 evicted (0.2); 3 takes the free slot 1
  EXPECT_TRUE(b.moves.empty());
  EXPECT_EQ(ranges(b), (std::vector<R>{{0, 2, 3, false}}));
  // The latest query only: an old favourite that the last query ignored goes first.
  b = step(*p, 4, {0.6f, 0.4f});  // 3 had 0.5, 2 had 0.5: the older (2) goes
  EXPECT_EQ(p->slot_contents(), (std::vector<int64_t>{4, 3}));
}

TEST(DetectedPolicy, KeepsTheHeaviestEarlyTokensAsSinks) {
  auto p = make_policy(kv::PolicySpec("detected:1+2"));
  EXPECT_EQ(p->n_sinks(), 1);
  step(*p, 0, {1.0f});
  step(*p, 1, {0.2f, 0.8f});
  step(*p, 2, {0.1f, 0.8f, 0.1f});  // mass 0:1.3 1:1.6 2:0.1
  // The cache fills at token 3: of tokens 0 and 1 (outside its window), 1 is the sink.
  BatchPlan b = step(*p, 3, {});
  EXPECT_FALSE(p->wants_attention());
  EXPECT_TRUE(b.moves.empty());
  EXPECT_EQ(ranges(b), (std::vector<R>{{1, 2, 3, true}, {2, 3, 3, false}, {0, 1, 3, false}}));
  b = step(*p, 4, {});  // 2 leaves; the sink moves out of the ring slot 1
  ASSERT_EQ(b.moves.size(), 1u);
  EXPECT_EQ(b.moves[0].from, 1);
  EXPECT_EQ(b.moves[0].to, 2);
  EXPECT_EQ(ranges(b), (std::vector<R>{{2, 3, 3, true}, {0, 2, 4, false}}));
  EXPECT_EQ(make_policy(kv::PolicySpec("detected:4+8,pick=first"))->spec(),
            "detected:4+8,pick=first");
  EXPECT_FALSE(make_policy(kv::PolicySpec("detected:4+8,pick=first"))->wants_attention());
}

TEST(NullSinkPolicy, CalibratesOnTheFirstTokensThenAddsAVirtualSink) {
  auto p = make_policy(kv::PolicySpec("nullsink:3,calib=first:1"));
  EXPECT_EQ(p->spec(), "nullsink:3,calib=first:1");
  EXPECT_TRUE(p->wants_attention());
  step(*p, 0, {1.0f}, 0.5);          // sees token 0, but is token 0: not counted
  step(*p, 1, {0.25f, 0.75f}, 2.0);  // log-sum-exp on token 0: 2 + log 0.25
  BatchPlan b = step(*p, 2, {0.5f, 0.25f, 0.25f}, 1.0);  // 1 + log 0.5
  EXPECT_TRUE(b.sink_logits.empty());
  EXPECT_FALSE(b.tokens[0].virtual_sink);
  b = step(*p, 3, {});  // token 0 evicted: the average is frozen
  EXPECT_FALSE(p->wants_attention());
  ASSERT_EQ(b.sink_logits.size(), 1u);
  EXPECT_NEAR(b.sink_logits[0], 0.5 * (2.0 + std::log(0.25) + 1.0 + std::log(0.5)), 1e-6);
  EXPECT_TRUE(b.tokens[0].virtual_sink);
  EXPECT_EQ(ranges(b), (std::vector<R>{{1, 3, 3, false}, {0, 1, 3, false}}));

  auto c = make_policy(kv::PolicySpec("nullsink:3,calib=const:-2.5"));
  EXPECT_FALSE(c->wants_attention());
  EXPECT_FALSE(c->per_layer());
  EXPECT_EQ(c->spec(), "nullsink:3,calib=const:-2.5");
  BatchPlan cb;
  c->plan(0, 1, cb);
  EXPECT_TRUE(cb.sink_logits.empty());
  for (int64_t n = 1; n < 4; ++n) {
    cb.clear();
    c->plan(n, 1, cb);
  }
  ASSERT_EQ(cb.sink_logits.size(), 1u);
  EXPECT_EQ(cb.sink_logits[0], -2.5f);
  EXPECT_EQ(make_policy(kv::PolicySpec("nullsink:8"))->spec(), "nullsink:8");
}

TEST(AttentionPolicies, BadSpecsSayWhy) {
  for (const char* bad :
       {"h2o:0+0", "h2o:4", "h2o:+4", "tova:", "tova:0", "detected:4", "detected:4+0",
        "detected:4+8,pick=random", "nullsink:0", "nullsink:8,calib=last:2",
        "nullsink:8,calib=first:0", "nullsink:8,calib=first:9", "nullsink:8,calib=const:x",
        "nullsink:8,calib=const:inf", "nullsink:8,calib", "sink:4+8,calib=first:2",
        "h2o:4+8,pick=first", "nullsink:8,calib=first:2,calib=first:3"}) {
    try {
      PolicySpec s(bad);
      make_policy(s);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("bad policy spec"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace spillway::kv
