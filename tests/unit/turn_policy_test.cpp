// sink:S+W,evict=turn on scripted streams with hand-worked tables of slots, ranges and
// query positions; without marks it plans exactly as sink:S+W; its spec and mark errors.
#include <gtest/gtest.h>

#include <tuple>

#include "spillway/core/error.h"
#include "spillway/kv/policy.h"

namespace spillway::kv {
namespace {

using R = std::tuple<int32_t, int32_t, int64_t, bool>;  // slot begin, end, query pos, sink

std::vector<R> ranges(const BatchPlan& p) {
  std::vector<R> r;
  for (const SlotRange& s : p.ranges) r.emplace_back(s.begin, s.end, s.query_pos, s.sink);
  return r;
}

// In a function of its own (not inline in the long tests): keeps the tests' frames small,
// which GCC's AddressSanitizer needs with detect_stack_use_after_return.
void expect_ranges(const BatchPlan& b, const std::vector<R>& want) {
  EXPECT_EQ(ranges(b), want);
}

BatchPlan plan_one(Policy& p, int64_t n) {
  BatchPlan b;
  p.plan(n, 1, b);
  return b;
}

TEST(TurnPolicy, DropsTheOldestWholeTurns) {
  // Cache of 8: the system turn is tokens 0..2 (the first mark, 3, becomes K = 3 sinks,
  // since max(2, 3) <= 8 / 2); the window has 5 slots in a ring of 5 (slots 3..7).
  // Turns: [3, 6), [6, 9), [9, ...).
  auto p = make_policy(kv::PolicySpec("sink:2+6,evict=turn"));
  EXPECT_EQ(p->spec(), "sink:2+6,evict=turn");
  EXPECT_EQ(*p->capacity(), 8);
  EXPECT_EQ(p->n_slots(), 8);
  for (int64_t m : {3, 6, 9}) p->mark_turn_start(m);
  EXPECT_EQ(p->n_sinks(), 3);
  for (int64_t n = 0; n < 8; ++n) {
    const BatchPlan b = plan_one(*p, n);
    EXPECT_EQ(b.tokens[0].write_slot, n);
    expect_ranges(b, {{0, static_cast<int32_t>(n + 1), n, false}});
  }
  // Token 8 does not fit: turn [3, 6) leaves whole (not just token 3). Span 0,1,2,6,7,8
  // at ranks 0..5: the sinks are scored with the query at 5, the window with it at 8.
  BatchPlan b = plan_one(*p, 8);
  EXPECT_EQ(b.tokens[0].write_slot, 3);
  EXPECT_EQ(b.tokens[0].key_pos, 8);
  expect_ranges(b, {{0, 3, 5, true}, {6, 8, 8, false}, {3, 4, 8, false}});
  b = plan_one(*p, 9);  // turn 9 begins; 6..9 fit
  EXPECT_EQ(b.tokens[0].write_slot, 4);
  expect_ranges(b, {{0, 3, 6, true}, {6, 8, 9, false}, {3, 5, 9, false}});
  b = plan_one(*p, 10);
  EXPECT_EQ(b.tokens[0].write_slot, 5);
  expect_ranges(b, {{0, 3, 7, true}, {6, 8, 10, false}, {3, 6, 10, false}});
  b = plan_one(*p, 11);  // turn [6, 9) leaves whole: 9, 10, 11 in slots 4, 5, 6
  EXPECT_EQ(b.tokens[0].write_slot, 6);
  expect_ranges(b, {{0, 3, 5, true}, {4, 7, 11, false}});
  plan_one(*p, 12);
  b = plan_one(*p, 13);
  EXPECT_EQ(b.tokens[0].write_slot, 3);
  expect_ranges(b, {{0, 3, 7, true}, {4, 8, 13, false}, {3, 4, 13, false}});
  // Turn 9 alone outgrows the window: its oldest token leaves, as in sink:S+W.
  b = plan_one(*p, 14);
  EXPECT_EQ(b.tokens[0].write_slot, 4);
  expect_ranges(b, {{0, 3, 7, true}, {5, 8, 14, false}, {3, 5, 14, false}});
  EXPECT_EQ(p->slot_contents(), (std::vector<int64_t>{0, 1, 2, 13, 14, 10, 11, 12}));
  // A new turn at 15: turn 9 is no longer the current one, so what is left of it leaves.
  p->mark_turn_start(15);
  b = plan_one(*p, 15);
  EXPECT_EQ(b.tokens[0].write_slot, 5);
  expect_ranges(b, {{0, 3, 3, true}, {5, 6, 15, false}});
  b = plan_one(*p, 16);
  expect_ranges(b, {{0, 3, 4, true}, {5, 7, 16, false}});
  EXPECT_EQ(p->slot_contents(), (std::vector<int64_t>{0, 1, 2, -1, -1, 15, 16, -1}));
}

TEST(TurnPolicy, ChunkedPlansKeepEveryTokensSpanIntact) {
  // max_batch 3: ring of 5 + 2; a chunk never overwrites what its own earlier tokens see.
  auto one = make_policy(kv::PolicySpec("sink:2+6,evict=turn"));
  auto chunked = make_policy(kv::PolicySpec("sink:2+6,evict=turn"), PolicyLimits{3, 0});
  for (Policy* p : {one.get(), chunked.get()})
    for (int64_t m : {3, 6, 9, 15, 17}) p->mark_turn_start(m);
  std::vector<std::vector<int64_t>> spans_one, spans_chunked;
  const auto spans = [](const BatchPlan& b, size_t i, const std::vector<int64_t>& slots) {
    std::vector<int64_t> s;
    for (int32_t r = b.tokens[i].range_begin; r < b.tokens[i].range_end; ++r)
      for (int32_t x = b.ranges[static_cast<size_t>(r)].begin;
           x < b.ranges[static_cast<size_t>(r)].end; ++x)
        s.push_back(slots[static_cast<size_t>(x)]);
    return s;
  };
  // The stream index in each slot as the chunk is stored token by token.
  std::vector<int64_t> slots_one(static_cast<size_t>(one->n_slots()), -1),
      slots_chunked(static_cast<size_t>(chunked->n_slots()), -1);
  for (int64_t n = 0; n < 30; ++n) {
    const BatchPlan b = plan_one(*one, n);
    slots_one[static_cast<size_t>(b.tokens[0].write_slot)] = n;
    spans_one.push_back(spans(b, 0, slots_one));
  }
  for (int64_t n0 = 0; n0 < 30; n0 += 3) {
    BatchPlan b;
    chunked->plan(n0, 3, b);
    for (size_t i = 0; i < 3; ++i) {
      slots_chunked[static_cast<size_t>(b.tokens[i].write_slot)] = b.tokens[i].stream_index;
      spans_chunked.push_back(spans(b, i, slots_chunked));
    }
  }
  EXPECT_EQ(spans_one, spans_chunked);
  EXPECT_EQ(spans_one[16], (std::vector<int64_t>{0, 1, 2, 15, 16}));
}

TEST(TurnPolicy, WithoutMarksItIsSinkSW) {
  for (int64_t batch : {1, 4}) {
    auto turn = make_policy(kv::PolicySpec("sink:2+6,evict=turn"), PolicyLimits{batch, 0});
    auto sink = make_policy(kv::PolicySpec("sink:2+6"), PolicyLimits{batch, 0});
    EXPECT_EQ(turn->n_slots(), sink->n_slots());
    for (int64_t n0 = 0; n0 < 40; n0 += batch) {
      BatchPlan a, b;
      turn->plan(n0, batch, a);
      sink->plan(n0, batch, b);
      ASSERT_EQ(a.tokens.size(), b.tokens.size());
      for (size_t i = 0; i < a.tokens.size(); ++i) {
        EXPECT_EQ(a.tokens[i].write_slot, b.tokens[i].write_slot);
        EXPECT_EQ(a.tokens[i].key_pos, b.tokens[i].key_pos);
      }
      EXPECT_EQ(ranges(a), ranges(b)) << n0;
      // (sink:S+W lists the whole ring, the batch's extra slots included)
      if (batch == 1) {
        EXPECT_EQ(turn->slot_contents(), sink->slot_contents()) << n0;
      }
    }
  }
}

TEST(TurnPolicy, TheConversationStartBecomesTheSinksUnlessTooLong) {
  auto p = make_policy(kv::PolicySpec("sink:2+6,evict=turn"));
  p->mark_turn_start(5);  // more than half the cache (4): the sinks stay the first 2
  EXPECT_EQ(p->n_sinks(), 2);
  for (int64_t n = 0; n < 8; ++n) plan_one(*p, n);
  // Token 8: the window (6 slots) would start at 3, inside turn [0, 5): it starts at 5.
  const BatchPlan b = plan_one(*p, 8);
  expect_ranges(b, {{0, 2, 5, true}, {5, 8, 8, false}, {2, 3, 8, false}});
  // A system turn shorter than S: the sinks are the first S tokens.
  auto q = make_policy(kv::PolicySpec("sink:3+5,evict=turn"));
  q->mark_turn_start(1);
  EXPECT_EQ(q->n_sinks(), 3);
  // The cache filled before any mark: K = S, and a later mark only starts a turn.
  auto r = make_policy(kv::PolicySpec("sink:2+6,evict=turn"));
  for (int64_t n = 0; n < 9; ++n) plan_one(*r, n);
  r->mark_turn_start(9);
  EXPECT_EQ(r->n_sinks(), 2);
  // reset() forgets the marks and the sinks.
  p->reset();
  EXPECT_EQ(p->n_sinks(), 2);
  p->mark_turn_start(3);
  EXPECT_EQ(p->n_sinks(), 3);
  // Clones carry the marks.
  auto c = p->clone();
  for (int64_t n = 0; n < 9; ++n) {
    BatchPlan x = plan_one(*p, n), y = plan_one(*c, n);
    EXPECT_EQ(ranges(x), ranges(y));
  }
}

TEST(TurnPolicy, MarksBehindTheStreamAreRejected) {
  auto p = make_policy(kv::PolicySpec("sink:2+6,evict=turn"));
  p->mark_turn_start(4);
  p->mark_turn_start(4);  // repeated: ignored
  EXPECT_THROW(p->mark_turn_start(3), InvalidArgument);
  for (int64_t n = 0; n < 6; ++n) plan_one(*p, n);
  EXPECT_THROW(p->mark_turn_start(5), InvalidArgument);
  p->mark_turn_start(6);
  // Other policies accept marks and ignore them.
  auto s = make_policy(kv::PolicySpec("sink:2+6"));
  s->mark_turn_start(3);
  EXPECT_EQ(s->n_sinks(), 2);
}

TEST(TurnPolicy, Specs) {
  EXPECT_EQ(PolicySpec("sink:4+252,evict=turn").str(), "sink:4+252,evict=turn");
  EXPECT_EQ(PolicySpec("sink:4+252,evict=token").str(), "sink:4+252");
  EXPECT_EQ(PolicySpec("sink:4+252,positions=absolute,evict=turn,kv=f16").str(),
            "sink:4+252,evict=turn,positions=absolute,kv=f16");
  for (const char* bad : {"sink:4+8,evict=message", "sink:4+8,evict", "window:8,evict=turn",
                          "sink:4+8,evict=turn,evict=token"}) {
    try {
      PolicySpec s(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("bad policy spec"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace spillway::kv
