// KV-cache policies: exact slot/position tables over scripted streams, spec parsing, and
// the equivalences the semantics promise.
#include "spillway/kv/policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "spillway/core/error.h"
#include "spillway/kv/cache.h"

namespace spillway::kv {
namespace {

// One token's plan flattened: its slot, key position and (slot -> query position) span.
struct Flat {
  int32_t slot;
  int64_t key_pos;
  std::vector<std::pair<int32_t, int64_t>> span;  // (slot, query_pos) in range order
};

std::vector<Flat> run(Policy& p, int64_t n_tokens, int64_t batch) {
  std::vector<Flat> out;
  for (int64_t n0 = 0; n0 < n_tokens; n0 += batch) {
    BatchPlan plan;
    const int64_t count = std::min(batch, n_tokens - n0);
    p.plan(n0, count, plan);
    EXPECT_EQ(plan.tokens.size(), static_cast<size_t>(count));
    for (const TokenPlan& t : plan.tokens) {
      Flat f{t.write_slot, t.key_pos, {}};
      for (int32_t r = t.range_begin; r < t.range_end; ++r)
        for (int32_t s = plan.ranges[r].begin; s < plan.ranges[r].end; ++s)
          f.span.emplace_back(s, plan.ranges[r].query_pos);
      out.push_back(f);
    }
  }
  return out;
}

// The stream indices a token attends to, through the slot contents at that moment.
std::vector<int64_t> attended_streams(const std::vector<Flat>& flats, size_t n) {
  // Replay writes to know which stream index is in each slot when token n attends.
  std::map<int32_t, int64_t> slot_owner;
  for (size_t i = 0; i <= n; ++i) slot_owner[flats[i].slot] = static_cast<int64_t>(i);
  std::vector<int64_t> streams;
  for (auto [slot, q] : flats[n].span) streams.push_back(slot_owner.at(slot));
  return streams;
}

TEST(PolicySpec, ParsesCanonicalForms) {
  EXPECT_EQ(make_policy(kv::PolicySpec("full"))->spec(), "full");
  EXPECT_EQ(make_policy(kv::PolicySpec("window:1024"))->spec(), "window:1024");
  EXPECT_EQ(make_policy(kv::PolicySpec("sink:4+1020"))->spec(), "sink:4+1020");
  EXPECT_EQ(make_policy(kv::PolicySpec("recompute:1024"))->spec(), "recompute:1024");
  EXPECT_EQ(make_policy(kv::PolicySpec("sink:4+1020,positions=absolute"))->spec(),
            "sink:4+1020,positions=absolute");
  EXPECT_EQ(make_policy(kv::PolicySpec("sink:4+1020,positions=cache"))->spec(), "sink:4+1020");
  // Storage and layer options belong to the spec, not to the policy.
  EXPECT_EQ(make_policy(kv::PolicySpec("sink:0+8,kv=f16"))->spec(), "sink:0+8");
  EXPECT_EQ(PolicySpec("sink:0+8,kv=f16").str(), "sink:0+8,kv=f16");
  EXPECT_EQ(PolicySpec("sink:00+8,local=native,kv=f32").str(), "sink:0+8");
  EXPECT_EQ(PolicySpec("window:8,local=policy,kv=f16").str(), "window:8,kv=f16,local=policy");
  EXPECT_EQ(PolicySpec("window:8,kv=f16").kv_type(), DType::F16);
  EXPECT_EQ(PolicySpec("sink:4+8,kv=q8_0").kv_type(), DType::Q8_0);
  EXPECT_EQ(PolicySpec("sink:4+8,kv=q8_0").str(), "sink:4+8,kv=q8_0");
  EXPECT_EQ(PolicySpec("sink:4+8,kv=f32").str(), "sink:4+8");
  EXPECT_EQ(PolicySpec("window:8").local(), LocalLayers::kNative);
  EXPECT_EQ(PolicySpec("window:8,local=policy").local(), LocalLayers::kPolicy);
  EXPECT_EQ(PolicySpec().str(), "full");
  EXPECT_EQ(PolicySpec("sink:4+60").kind(), "sink");
  EXPECT_EQ(PolicySpec("sink:4+60").args(), "4+60");
  EXPECT_EQ(*make_policy(kv::PolicySpec("sink:4+1020"))->capacity(), 1024);
  EXPECT_EQ(*make_policy(kv::PolicySpec("window:7"))->capacity(), 7);
  EXPECT_FALSE(make_policy(kv::PolicySpec("full"))->capacity().has_value());
}

TEST(PolicySpec, RejectsBadSpecsWithUsage) {
  for (const char* bad : {"",
                          "fullx",
                          "full:3",
                          "window",
                          "window:",
                          "window:0",
                          "window:-3",
                          "window:12a",
                          "window:1.5",
                          "sink:4",
                          "sink:4+",
                          "sink:+8",
                          "sink:-1+8",
                          "sink:4+0",
                          "sink:4+8+2",
                          "recompute:0",
                          "sink:4+8,positions=relative",
                          "sink:4+8,kv=q8",
                          "sink:4+8,",
                          "sink:4+8,positions=cache,positions=absolute",
                          "sink:4+8,local=global",
                          "sink:4+8,local=policy,local=native",
                          "sink:4+8,kv=f16,kv=f32",
                          "sink:4+8,kv=q4_0",
                          "window:99999999999999999999",
                          "window:2000000000",
                          "bogus:1"}) {
    try {
      make_policy(kv::PolicySpec(bad));
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("bad policy spec"), std::string::npos) << msg;
      EXPECT_NE(msg.find("sink:S+W"), std::string::npos) << "no usage in: " << msg;
    }
  }
}

TEST(SinkPolicy, ExactSlotsAndPositionsPerToken) {
  // sink:2+3 over 8 tokens, one at a time. Slots: sinks 0,1; ring of 3 slots 2,3,4.
  auto p = make_policy(kv::PolicySpec("sink:2+3"));
  EXPECT_EQ(p->n_slots(), 5);
  auto f = run(*p, 8, 1);
  const std::vector<int32_t> slots = {0, 1, 2, 3, 4, 2, 3, 4};
  for (size_t n = 0; n < 8; ++n) {
    EXPECT_EQ(f[n].slot, slots[n]) << n;
    EXPECT_EQ(f[n].key_pos, static_cast<int64_t>(n));
  }
  // Token 4: no eviction yet, attends 0..4 with the query at 4.
  EXPECT_EQ(f[4].span,
            (std::vector<std::pair<int32_t, int64_t>>{{0, 4}, {1, 4}, {2, 4}, {3, 4}, {4, 4}}));
  // Token 5: sinks 0,1 (query at S+W-1 = 4), window 3,4,5 in slots 3,4,2 (query at 5).
  EXPECT_EQ(f[5].span,
            (std::vector<std::pair<int32_t, int64_t>>{{0, 4}, {1, 4}, {3, 5}, {4, 5}, {2, 5}}));
  EXPECT_EQ(attended_streams(f, 5), (std::vector<int64_t>{0, 1, 3, 4, 5}));
  // Token 7: window 5,6,7 in slots 2,3,4.
  EXPECT_EQ(f[7].span,
            (std::vector<std::pair<int32_t, int64_t>>{{0, 4}, {1, 4}, {2, 7}, {3, 7}, {4, 7}}));
  EXPECT_EQ(attended_streams(f, 7), (std::vector<int64_t>{0, 1, 5, 6, 7}));
  EXPECT_EQ(p->slot_contents(), (std::vector<int64_t>{0, 1, 5, 6, 7}));
}

TEST(SinkPolicy, AbsolutePositionsUseTheStreamIndexForSinks) {
  auto p = make_policy(kv::PolicySpec("sink:2+3,positions=absolute"));
  auto f = run(*p, 8, 1);
  EXPECT_EQ(f[7].span,
            (std::vector<std::pair<int32_t, int64_t>>{{0, 7}, {1, 7}, {2, 7}, {3, 7}, {4, 7}}));
}

TEST(WindowPolicy, ExactSlotsAndSpans) {
  auto p = make_policy(kv::PolicySpec("window:3"));
  EXPECT_EQ(p->n_slots(), 3);
  auto f = run(*p, 6, 1);
  const std::vector<int32_t> slots = {0, 1, 2, 0, 1, 2};
  for (size_t n = 0; n < 6; ++n) EXPECT_EQ(f[n].slot, slots[n]);
  EXPECT_EQ(attended_streams(f, 1), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(attended_streams(f, 3), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(attended_streams(f, 5), (std::vector<int64_t>{3, 4, 5}));
  for (auto [slot, q] : f[5].span) EXPECT_EQ(q, 5);
}

TEST(FullPolicy, GrowsAndAttendsEverything) {
  auto p = make_policy(kv::PolicySpec("full"), {2, 0});
  auto f = run(*p, 5, 2);
  EXPECT_EQ(p->n_slots(), 5);
  for (size_t n = 0; n < 5; ++n) {
    EXPECT_EQ(f[n].slot, static_cast<int32_t>(n));
    EXPECT_EQ(f[n].span.size(), n + 1);
  }
}

TEST(RecomputePolicy, ReplaysTheWindowFromPositionZero) {
  auto p = make_policy(kv::PolicySpec("recompute:4"), {4, 0});
  EXPECT_EQ(*p->replay_from(0), 0);
  EXPECT_EQ(*p->replay_from(3), 0);
  EXPECT_EQ(*p->replay_from(10), 7);
  auto f = run(*p, 4, 4);
  EXPECT_EQ(f[3].span, (std::vector<std::pair<int32_t, int64_t>>{{0, 3}, {1, 3}, {2, 3}, {3, 3}}));
  BatchPlan plan;
  EXPECT_THROW(p->plan(4, 1, plan), InvalidArgument);  // past the window without a reset
  p->reset();
  EXPECT_NO_THROW(p->plan(0, 1, plan));
}

// Spans (as stream indices) must follow the contract's table for every token, whatever
// the batch size, and batches must never overwrite a slot a token of the same batch
// still attends to.
std::vector<int64_t> expected_span(const std::string& kind, int64_t s, int64_t w, int64_t n) {
  std::vector<int64_t> v;
  if (kind == "full") {
    for (int64_t m = 0; m <= n; ++m) v.push_back(m);
  } else {
    for (int64_t m = 0; m < std::min(s, n + 1); ++m) v.push_back(m);
    for (int64_t m = std::max(s, n - w + 1); m <= n; ++m) v.push_back(m);
  }
  return v;
}

TEST(Policies, SpansFollowTheContractForAnyBatchSize) {
  struct Case {
    std::string spec, kind;
    int64_t s, w;
  };
  for (const Case& c :
       {Case{"full", "full", 0, 0}, Case{"window:5", "sink", 0, 5}, Case{"sink:1+4", "sink", 1, 4},
        Case{"sink:4+3", "sink", 4, 3}, Case{"sink:3+1", "sink", 3, 1}}) {
    for (int64_t batch : {1, 2, 3, 7, 16}) {
      auto p = make_policy(kv::PolicySpec(c.spec), {batch, 0});
      const int64_t n_tokens = 40;
      int64_t n_slots_seen = 0;
      std::map<int32_t, int64_t> owner;
      for (int64_t n0 = 0; n0 < n_tokens; n0 += batch) {
        BatchPlan plan;
        const int64_t count = std::min(batch, n_tokens - n0);
        p->plan(n0, count, plan);
        n_slots_seen = std::max(n_slots_seen, p->n_slots());
        for (const TokenPlan& t : plan.tokens) owner[t.write_slot] = t.stream_index;
        for (const TokenPlan& t : plan.tokens) {
          std::vector<int64_t> got;
          for (int32_t r = t.range_begin; r < t.range_end; ++r)
            for (int32_t sl = plan.ranges[r].begin; sl < plan.ranges[r].end; ++sl) {
              ASSERT_LT(sl, p->n_slots());
              got.push_back(owner.at(sl));
            }
          std::sort(got.begin(), got.end());
          EXPECT_EQ(got, expected_span(c.kind, c.s, c.w, t.stream_index))
              << c.spec << " batch " << batch << " token " << t.stream_index;
          if (p->capacity()) {
            EXPECT_LE(static_cast<int64_t>(got.size()), *p->capacity());
          }
        }
      }
      if (c.kind != "full") {
        EXPECT_EQ(n_slots_seen, c.s + c.w + batch - 1) << c.spec;
      }
    }
  }
}

TEST(Policies, CachePositionsGiveRankDistances) {
  // positions=cache: query position minus key position must equal (rank of query in the
  // span) - (rank of key in the span), for every attended key.
  for (const char* spec : {"sink:4+6", "sink:1+3", "window:5"}) {
    auto p = make_policy(kv::PolicySpec(spec), {3, 0});
    std::map<int32_t, int64_t> owner;
    for (int64_t n0 = 0; n0 < 30; n0 += 3) {
      BatchPlan plan;
      p->plan(n0, 3, plan);
      for (const TokenPlan& t : plan.tokens) owner[t.write_slot] = t.key_pos;
      for (const TokenPlan& t : plan.tokens) {
        std::vector<std::pair<int64_t, int64_t>> keys;  // (stream index = key pos, query pos)
        for (int32_t r = t.range_begin; r < t.range_end; ++r)
          for (int32_t sl = plan.ranges[r].begin; sl < plan.ranges[r].end; ++sl)
            keys.emplace_back(owner.at(sl), plan.ranges[r].query_pos);
        std::sort(keys.begin(), keys.end());
        const int64_t q_rank = static_cast<int64_t>(keys.size()) - 1;
        for (size_t rank = 0; rank < keys.size(); ++rank)
          EXPECT_EQ(keys[rank].second - keys[rank].first, q_rank - static_cast<int64_t>(rank))
              << spec << " token " << t.stream_index;
      }
    }
  }
}

TEST(Policies, OutOfOrderPlansAreRejected) {
  auto p = make_policy(kv::PolicySpec("sink:2+3"), {2, 0});
  BatchPlan plan;
  EXPECT_THROW(p->plan(1, 1, plan), InvalidArgument);
  EXPECT_THROW(p->plan(0, 3, plan), InvalidArgument);
  p->plan(0, 2, plan);
  EXPECT_THROW(p->plan(0, 1, plan), InvalidArgument);
}

}  // namespace
}  // namespace spillway::kv

namespace spillway::kv {
namespace {

CacheShape shape_with_windows(std::vector<int64_t> windows) {
  CacheShape s;
  s.n_head_kv = 2;
  s.head_dim = 8;
  for (int64_t w : windows) s.layers.push_back({w});
  return s;
}

TEST(Cache, LocalLayersKeepTheirNativeWindowAndSizeTheirOwnStorage) {
  // Layers 0, 1, 3, 4 local (window 6), layer 2 and 5 global.
  const CacheShape shape = shape_with_windows({6, 6, 0, 6, 6, 0});
  Cache c(kv::PolicySpec("sink:2+10"), shape, {3, 0});
  ASSERT_EQ(c.n_groups(), 2);
  EXPECT_EQ(c.group_layers(0), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(c.group_layers(1), (std::vector<int64_t>{0, 1, 3, 4}));
  EXPECT_EQ(c.group_policy(1).spec(), "window:6");
  // Global layers: 2 sinks + a ring of 10 + 3 - 1; local layers: a ring of 6 + 3 - 1.
  EXPECT_EQ(c.storage().n_slots(2), 14);
  EXPECT_EQ(c.storage().n_slots(0), 8);
  EXPECT_EQ(c.storage().bytes(), 2u * (2 * 14 + 4 * 8) * 2 * 8 * 4);
  const StepPlan& p = c.plan(0, 3);
  EXPECT_EQ(p.n_tokens(), 3);
  EXPECT_EQ(&p.layer(0), &p.groups[1]);
  EXPECT_EQ(&p.layer(5), &p.groups[0]);
  for (int64_t n = 3; n < 30; n += 3) c.plan(n, 3);
  // Token 29 in a local layer attends to stream 24..29 (6 tokens), in a global one to
  // 0, 1 and 20..29.
  EXPECT_EQ(c.step().layer(0).span_size(2), 6);
  EXPECT_EQ(c.step().layer(2).span_size(2), 12);
}

TEST(Cache, LocalPolicyPutsEveryLayerUnderTheSpec) {
  Cache c(kv::PolicySpec("sink:2+10,local=policy"), shape_with_windows({6, 0, 6}), {1, 0});
  EXPECT_EQ(c.n_groups(), 1);
  EXPECT_EQ(c.storage().n_slots(0), 12);
  EXPECT_EQ(c.storage().n_slots(1), 12);
  // A model without local layers has one group whatever local= says.
  EXPECT_EQ(Cache(kv::PolicySpec("full"), shape_with_windows({0, 0}), {1, 16}).n_groups(), 1);
}

TEST(Cache, FullCacheGrowsOnlyTheGlobalLayers) {
  Cache c(kv::PolicySpec("full"), shape_with_windows({4, 0}), {2, 0});
  for (int64_t n = 0; n < 40; n += 2) c.plan(n, 2);
  EXPECT_GE(c.storage().n_slots(1), 40);
  EXPECT_EQ(c.storage().n_slots(0), 5);
  EXPECT_EQ(c.bytes_peak(), c.storage().bytes());
}

TEST(Cache, CopiesAreIndependent) {
  Cache a(kv::PolicySpec("sink:1+4"), shape_with_windows({0}), {1, 0});
  for (int64_t n = 0; n < 7; ++n) a.plan(n, 1);
  static_cast<float*>(a.storage().k(0, 0))[0] = 1.0f;
  Cache b(a);
  EXPECT_EQ(b.n_planned(), 7);
  EXPECT_EQ(b.policy().slot_contents(), a.policy().slot_contents());
  a.plan(7, 1);
  static_cast<float*>(a.storage().k(0, 0))[0] = 2.0f;
  EXPECT_EQ(b.n_planned(), 7);
  EXPECT_EQ(static_cast<const float*>(b.storage().k(0, 0))[0], 1.0f);
  b = a;
  EXPECT_EQ(b.n_planned(), 8);
  EXPECT_EQ(static_cast<const float*>(b.storage().k(0, 0))[0], 2.0f);
  b.reset();
  EXPECT_EQ(b.n_planned(), 0);
  EXPECT_EQ(a.n_planned(), 8);
}

TEST(Cache, SinkRangesAreMarked) {
  auto p = make_policy(kv::PolicySpec("sink:2+3"));
  BatchPlan plan;
  for (int64_t n = 0; n < 6; ++n) {
    plan.clear();
    p->plan(n, 1, plan);
  }
  // Token 5: sinks [0, 2) marked, the window not.
  ASSERT_GE(plan.ranges.size(), 2u);
  EXPECT_TRUE(plan.ranges[0].sink);
  for (size_t r = 1; r < plan.ranges.size(); ++r) EXPECT_FALSE(plan.ranges[r].sink);
}

}  // namespace
}  // namespace spillway::kv
