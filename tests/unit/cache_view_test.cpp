// The live cache view (analysis/cache_view.h): the layout of every policy family checked
// against the slots an independent observer rebuilds from the plans' writes and moves, the
// exact counts of sink:S+W and window:W, and LastTokenAttention's shares against
// AttentionStats (analysis/attention_stats.h), a separate implementation.
#include "spillway/analysis/cache_view.h"

#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <set>

#include "spillway/analysis/attention_stats.h"
#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway::analysis {
namespace {

const model::Model& tiny() {
  static const auto m = [] {
    test::TinyModelSpec spec;
    spec.n_layer = 3;
    return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "cache_view.gguf"));
  }();
  return *m;
}

// Rebuilds the global layers' slots from the plans alone: each step's moves, then each
// token's write (stream index and key position), and remembers the last token's ranges.
class SlotTracker final : public model::AttentionObserver {
 public:
  struct Slot {
    int64_t index = -1;
    int64_t key_pos = -1;
  };
  std::map<int32_t, Slot> slots;
  std::vector<kv::SlotRange> last_ranges;
  int64_t last_index = -1;

  void on_step(const kv::StepPlan& step) override {
    const kv::BatchPlan& p = step.groups[0];
    // A replaying policy starts over from an empty cache: its first step is stream index 0.
    if (!p.tokens.empty() && p.tokens.front().stream_index == 0) slots.clear();
    std::map<int32_t, Slot> before = slots;
    for (const kv::SlotMove& m : p.moves) slots[m.to] = before[m.from];
    for (const kv::TokenPlan& t : p.tokens) slots[t.write_slot] = {t.stream_index, t.key_pos};
    const kv::TokenPlan& last = p.tokens.back();
    last_ranges.assign(p.ranges.begin() + last.range_begin, p.ranges.begin() + last.range_end);
    last_index = last.stream_index;
  }
};

struct Case {
  const char* spec;
  int64_t n;      // tokens fed
  int64_t chunk;  // tokens per feed() call
};

class CacheLayoutTest : public ::testing::TestWithParam<Case> {};

TEST_P(CacheLayoutTest, MatchesTheSlotsThePlansWrote) {
  const Case c = GetParam();
  SessionOptions so;
  so.policy = kv::PolicySpec(c.spec);
  so.max_batch = 8;
  so.threads = 1;
  Session s(tiny(), so);
  SlotTracker tracker;
  s.set_observer(&tracker);
  const std::vector<TokenId> tokens = test::random_tokens(c.n, 5);
  for (int64_t at = 0; at < c.n; at += c.chunk)
    s.feed(std::span<const TokenId>(tokens.data() + at, std::min(c.chunk, c.n - at)));

  const CacheLayout layout = cache_layout(s.cache(), s.n_past());
  ASSERT_EQ(layout.n_past, c.n);
  EXPECT_EQ(layout.n_sink + layout.n_window + layout.n_kept + layout.n_evicted, c.n);
  ASSERT_EQ(static_cast<int64_t>(layout.tokens.size()), c.n);  // first_listed 0: all listed
  const int64_t offset = c.n - 1 - tracker.last_index;         // replays: the window's start

  // What the last query attended to, by the tracker's slots.
  std::map<int64_t, std::pair<int32_t, const kv::SlotRange*>> attended;
  for (const kv::SlotRange& r : tracker.last_ranges)
    for (int32_t slot = r.begin; slot < r.end; ++slot)
      attended[tracker.slots.at(slot).index + offset] = {slot, &r};
  for (const CachedToken& t : layout.tokens) {
    SCOPED_TRACE(testing::Message() << c.spec << " token " << t.index);
    const auto it = attended.find(t.index);
    if (it == attended.end()) {
      EXPECT_EQ(t.state, TokenState::kEvicted);
      EXPECT_EQ(t.slot, -1);
      continue;
    }
    const auto [slot, range] = it->second;
    EXPECT_EQ(t.slot, slot);
    EXPECT_EQ(t.key_pos, tracker.slots.at(slot).key_pos);
    EXPECT_EQ(t.query_pos, range->query_pos);
    if (range->sink) {
      EXPECT_EQ(t.state, TokenState::kSink);
    } else {
      EXPECT_TRUE(t.state == TokenState::kWindow || t.state == TokenState::kKept);
    }
  }
  EXPECT_EQ(static_cast<int64_t>(attended.size()), layout.n_sink + layout.n_window + layout.n_kept);
  // The window is the unbroken newest run; the last token is in it.
  EXPECT_EQ(layout.tokens.back().state, TokenState::kWindow);
  for (size_t i = 1; i < layout.tokens.size(); ++i) {
    if (layout.tokens[i - 1].state == TokenState::kWindow) {
      EXPECT_EQ(layout.tokens[i].state, TokenState::kWindow) << c.spec << " at " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Policies, CacheLayoutTest,
    ::testing::Values(Case{"full", 70, 8}, Case{"window:24", 70, 5}, Case{"sink:4+24", 70, 1},
                      Case{"sink:4+24", 70, 8}, Case{"sink:4+24,positions=absolute", 50, 3},
                      Case{"sink:2+16,evict=turn", 60, 4}, Case{"recompute:16", 40, 1},
                      Case{"h2o:8+16", 60, 1}, Case{"tova:24", 60, 1}, Case{"detected:4+16", 60, 1},
                      Case{"nullsink:24", 60, 8}, Case{"sink:4+24,kv=f16", 60, 8}),
    [](const testing::TestParamInfo<Case>& info) {
      std::string name = std::string(info.param.spec) + "_" + std::to_string(info.param.chunk);
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return name;
    });

TEST(CacheLayout, SinkAndWindowCountsOnceTheWindowMoved) {
  SessionOptions so;
  so.policy = kv::PolicySpec("sink:4+24");
  so.max_batch = 8;
  so.threads = 1;
  Session s(tiny(), so);
  const std::vector<TokenId> tokens = test::random_tokens(100, 9);
  s.feed(std::span<const TokenId>(tokens.data(), 20));
  CacheLayout l = cache_layout(s.cache(), s.n_past());
  // Before the window is full, nothing is evicted and nothing is a sink yet.
  EXPECT_EQ(l.n_sink, 0);
  EXPECT_EQ(l.n_window, 20);
  s.feed(std::span<const TokenId>(tokens.data() + 20, 80));
  l = cache_layout(s.cache(), s.n_past());
  EXPECT_EQ(l.n_sink, 4);
  EXPECT_EQ(l.n_window, 24);
  EXPECT_EQ(l.n_kept, 0);
  EXPECT_EQ(l.n_evicted, 100 - 28);
  for (const CachedToken& t : l.tokens) {
    const TokenState want = t.index < 4     ? TokenState::kSink
                            : t.index >= 76 ? TokenState::kWindow
                                            : TokenState::kEvicted;
    EXPECT_EQ(t.state, want) << "token " << t.index;
  }
  // positions=cache: the sinks are scored with the query at S+W-1, so their distances are
  // those of tokens right before the window.
  EXPECT_EQ(l.tokens[0].query_pos, 27);
  EXPECT_EQ(l.tokens[0].key_pos, 0);
  EXPECT_EQ(l.tokens.back().query_pos, 99);

  // Listing from token 90 on: the held tokens before it and every token after it.
  l = cache_layout(s.cache(), s.n_past(), 90);
  EXPECT_EQ(l.first_listed, 90);
  EXPECT_EQ(static_cast<int64_t>(l.tokens.size()), 4 + (90 - 76) + 10);
  EXPECT_EQ(l.n_evicted, 72);  // still counted
}

TEST(CacheLayout, EmptyBeforeTheFirstTokenAndRefusesAShortStream) {
  SessionOptions so;
  so.policy = kv::PolicySpec("sink:4+24");
  so.threads = 1;
  Session s(tiny(), so);
  CacheLayout l = cache_layout(s.cache(), 0);
  EXPECT_TRUE(l.tokens.empty());
  s.feed(test::random_tokens(10, 3));
  EXPECT_THROW(cache_layout(s.cache(), 5), InvalidArgument);
}

// The shares LastTokenAttention records for the last token agree with AttentionStats
// recording that one query.
TEST(LastTokenAttention, AgreesWithAttentionStats) {
  for (const char* spec : {"sink:4+24", "window:24", "full"}) {
    SCOPED_TRACE(spec);
    const std::vector<TokenId> tokens = test::random_tokens(60, 11);
    SessionOptions so;
    so.policy = kv::PolicySpec(spec);
    so.max_batch = 8;
    so.threads = 1;
    Session a(tiny(), so), b(tiny(), so);
    LastTokenAttention live(tiny().config(), 4, 10);
    AttentionStatsOptions ao;
    ao.first = 59;
    ao.count = 1;
    AttentionStats stats(tiny().config(), ao);
    a.set_observer(&live);
    b.set_observer(&stats);
    a.feed(tokens);
    b.feed(tokens);
    const AttentionShares& sh = live.shares();
    ASSERT_EQ(sh.stream_index, 59);
    const int64_t n_head = tiny().config().n_head;
    for (int64_t l = 0; l < tiny().config().n_layer; ++l) {
      for (int64_t h = 0; h < n_head; ++h) {
        const std::vector<double>& by = stats.mass_by_stream(l, h);
        double first = 0, newest = 0, all = 0;
        for (size_t k = 0; k < by.size(); ++k) {
          if (k < 4) first += by[k];
          if (static_cast<int64_t>(k) > 59 - 10) newest += by[k];
          all += by[k];
        }
        const size_t cell = static_cast<size_t>(l * n_head + h);
        EXPECT_NEAR(sh.first_tokens[cell], first, 1e-5) << "layer " << l << " head " << h;
        EXPECT_NEAR(sh.newest[cell], newest, 1e-5);
        EXPECT_NEAR(sh.sink[cell], stats.sink_range_mass(l, h), 1e-5);
        EXPECT_NEAR(all, 1.0, 1e-4);
      }
    }
    if (std::string(spec) == "sink:4+24") {
      EXPECT_GT(sh.sink[0], 0.0f);  // the sink ranges are in play
    } else if (std::string(spec) == "window:24") {
      EXPECT_EQ(sh.first_tokens[0], 0.0f);  // evicted: nothing can land on them
    }
    EXPECT_EQ(sh.span[0], std::string(spec) == "full"        ? 60
                          : std::string(spec) == "window:24" ? 24
                                                             : 28);
  }
}

TEST(LastTokenAttention, RefusesEmptyGroups) {
  EXPECT_THROW(LastTokenAttention(tiny().config(), 0, 4), InvalidArgument);
  EXPECT_THROW(LastTokenAttention(tiny().config(), 4, 0), InvalidArgument);
}

}  // namespace
}  // namespace spillway::analysis
