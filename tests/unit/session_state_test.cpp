// A session saved to bytes (Session::save_state) and loaded into a fresh session goes on
// exactly as the original does: the same logits, bit for bit, for every policy family
// (their slots, scores, chosen sinks, turn marks and calibration travel with it), for a
// model with native local layers, and through a file. Bad states are errors that name what
// is wrong and leave the session reset: truncation at every length, a flipped byte, another
// policy, max_batch or model, and single-byte changes under a recomputed checksum, which
// must either load (and then decode) or throw FormatError, never crash.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/core/serial.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

const model::Model& llama() {
  static const auto m = [] {
    test::TinyModelSpec spec;
    spec.n_layer = 3;
    return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "state_llama.gguf"));
  }();
  return *m;
}

const model::Model& gemma() {
  static const auto m = [] {
    test::TinyModelSpec spec;
    spec.architecture = "gemma3";
    spec.n_layer = 4;
    spec.sliding_window = 12;
    spec.swa_pattern = 2;
    return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "state_gemma.gguf"));
  }();
  return *m;
}

SessionOptions options(const char* spec, int64_t max_batch) {
  SessionOptions so;
  so.policy = kv::PolicySpec(spec);
  so.max_batch = max_batch;
  so.threads = 1;
  return so;
}

// Feeds tokens [from, to) in chunks, marking a chat turn at the start of every chunk, and
// returns every token's logits.
std::vector<float> run(Session& s, const std::vector<TokenId>& tokens, int64_t from, int64_t to,
                       int64_t chunk) {
  std::vector<float> out;
  const int64_t n_vocab = s.model().config().n_vocab;
  for (int64_t at = from; at < to; at += chunk) {
    s.mark_turn_start(at);
    s.feed(std::span<const TokenId>(tokens.data() + at, std::min(chunk, to - at)),
           [&](int64_t, const float* logits) {
             out.insert(out.end(), logits, logits + n_vocab);
             return true;
           });
  }
  return out;
}

struct Case {
  const char* spec;
  bool gemma;
  int64_t saved_at;  // tokens before the save
  int64_t total;     // tokens in all
  int64_t chunk;
};

class SessionStateTest : public ::testing::TestWithParam<Case> {};

TEST_P(SessionStateTest, ALoadedSessionGoesOnBitForBit) {
  const Case c = GetParam();
  const model::Model& m = c.gemma ? gemma() : llama();
  const std::vector<TokenId> tokens = test::random_tokens(c.total, 11);
  Session original(m, options(c.spec, 8));
  run(original, tokens, 0, c.saved_at, c.chunk);
  const std::string state = original.save_state();

  Session loaded(m, options(c.spec, 8));
  loaded.feed(std::span<const TokenId>(tokens.data(), 3));  // a stream to be replaced
  loaded.load_state(state);
  EXPECT_EQ(loaded.n_past(), c.saved_at);
  ASSERT_NE(loaded.last_logits(), nullptr);
  EXPECT_EQ(std::memcmp(loaded.last_logits(), original.last_logits(),
                        static_cast<size_t>(m.config().n_vocab) * sizeof(float)),
            0);
  EXPECT_EQ(loaded.cache().policy().slot_contents(), original.cache().policy().slot_contents());
  EXPECT_EQ(loaded.save_state(), state);  // nothing lost or added on the way

  const std::vector<float> want = run(original, tokens, c.saved_at, c.total, c.chunk);
  const std::vector<float> got = run(loaded, tokens, c.saved_at, c.total, c.chunk);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << c.spec;

  // The comparison can fail: a session that saw a different stream gives other logits.
  Session other(m, options(c.spec, 8));
  std::vector<TokenId> shifted = tokens;
  shifted[c.saved_at - 1] =
      (shifted[c.saved_at - 1] + 1) % static_cast<TokenId>(m.config().n_vocab);
  run(other, shifted, 0, c.saved_at, c.chunk);
  const std::vector<float> differ = run(other, tokens, c.saved_at, c.total, c.chunk);
  EXPECT_NE(std::memcmp(differ.data(), want.data(), want.size() * sizeof(float)), 0) << c.spec;
}

INSTANTIATE_TEST_SUITE_P(
    Policies, SessionStateTest,
    ::testing::Values(Case{"full", false, 37, 60, 8}, Case{"window:24", false, 41, 70, 5},
                      Case{"sink:4+24", false, 45, 80, 1}, Case{"sink:4+24", false, 45, 80, 8},
                      Case{"sink:4+24,positions=absolute", false, 33, 50, 3},
                      Case{"sink:2+16,evict=turn", false, 31, 60, 4},
                      Case{"sink:2+16,evict=turn", false, 9, 40, 4},
                      Case{"recompute:16", false, 29, 40, 1}, Case{"h2o:8+16", false, 40, 60, 1},
                      Case{"tova:24", false, 40, 60, 1}, Case{"detected:4+16", false, 30, 50, 1},
                      Case{"detected:4+16", false, 12, 50, 1},
                      Case{"nullsink:24", false, 20, 60, 8}, Case{"nullsink:24", false, 40, 60, 8},
                      Case{"sink:4+24,kv=f16", false, 45, 70, 8},
                      Case{"sink:4+20", true, 40, 60, 8}, Case{"h2o:6+14", true, 30, 45, 1},
                      Case{"full", true, 25, 40, 8}),
    [](const testing::TestParamInfo<Case>& info) {
      std::string name = std::string(info.param.gemma ? "gemma_" : "llama_") + info.param.spec +
                         "_at" + std::to_string(info.param.saved_at) + "_" +
                         std::to_string(info.param.chunk);
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return name;
    });

TEST(SessionState, ThroughAFile) {
  const std::vector<TokenId> tokens = test::random_tokens(50, 3);
  Session a(llama(), options("sink:4+24", 8));
  a.feed(std::span<const TokenId>(tokens.data(), 30));
  const std::string path = (test::temp_dir() / "session.state").string();
  a.save(path);
  Session b(llama(), options("sink:4+24", 8));
  b.load(path);
  EXPECT_EQ(b.save_state(), a.save_state());
  EXPECT_THROW(b.load((test::temp_dir() / "no-such.state").string()), IoError);
  EXPECT_EQ(b.n_past(), 30);  // an unreadable file leaves the session alone
}

// Loads `state` into a fresh sink:4+24 session and expects FormatError mentioning `words`,
// with the session reset afterwards and still usable.
void expect_rejected(const std::string& state, const std::string& words,
                     const char* spec = "sink:4+24", int64_t max_batch = 8,
                     const model::Model* m = nullptr) {
  Session s(m ? *m : llama(), options(spec, max_batch));
  const std::vector<TokenId> tokens = test::random_tokens(5, 1);
  s.feed(std::span<const TokenId>(tokens.data(), 5));
  try {
    s.load_state(state, "test.state");
    ADD_FAILURE() << "loaded, expected an error mentioning '" << words << "'";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("test.state"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.n_past(), 0);
  EXPECT_EQ(s.feed(std::span<const TokenId>(tokens.data(), 5)), 5);
}

std::string saved(const char* spec, int64_t n, int64_t max_batch = 8) {
  Session s(llama(), options(spec, max_batch));
  const std::vector<TokenId> tokens = test::random_tokens(n, 5);
  s.feed(std::span<const TokenId>(tokens.data(), static_cast<size_t>(n)));
  return s.save_state();
}

// Replaces the trailing checksum with the data's own, so that a change gets past it.
std::string resealed(std::string state) {
  const uint64_t sum = fnv1a64(std::string_view(state).substr(0, state.size() - 8));
  std::memcpy(state.data() + state.size() - 8, &sum, 8);
  return state;
}

TEST(SessionState, BadStatesAreErrorsThatNameTheProblem) {
  const std::string state = saved("sink:4+24", 30);
  expect_rejected("", "not a spillway session state");
  expect_rejected("hello, this is not a state at all", "not a spillway session state");
  std::string flipped = state;
  flipped[flipped.size() / 2] ^= 0x20;
  expect_rejected(flipped, "checksum");
  expect_rejected(state.substr(0, state.size() - 1), "checksum");
  expect_rejected(saved("sink:4+20", 30), "under 'sink:4+20'");
  expect_rejected(saved("sink:4+24,kv=f16", 30), "sink:4+24,kv=f16");
  expect_rejected(saved("sink:4+24", 30, 4), "max batch 4");
  expect_rejected(state, "this session's is gemma3 with 4 layers", "sink:4+24", 8, &gemma());
  expect_rejected(state + "x", "checksum");
  expect_rejected(resealed(state + std::string(8, '\0')), "after the state");
}

TEST(SessionState, EveryTruncationIsAnError) {
  const std::string state = saved("h2o:8+16", 30);
  // Every length, each resealed so that the reader itself meets the end of the data.
  for (size_t len = 0; len < state.size(); len += len < 400 ? 1 : 997) {
    SCOPED_TRACE(len);
    Session s(llama(), options("h2o:8+16", 8));
    std::string cut = state.substr(0, len);
    if (cut.size() > 24) cut = resealed(cut);
    EXPECT_THROW(s.load_state(cut), FormatError);
    EXPECT_EQ(s.n_past(), 0);
  }
}

TEST(SessionState, ChangedBytesLoadOrFailButNeverCrash) {
  std::mt19937_64 rng(7);
  for (const char* spec : {"sink:4+24", "h2o:8+16", "sink:2+16,evict=turn", "detected:4+16",
                           "nullsink:24", "recompute:16", "full"}) {
    const std::string state = saved(spec, 40);
    int loaded = 0, refused = 0;
    // The head of the state (shape, positions, slots, scores) is where the checks are:
    // change bytes there, and a few in the K/V.
    const size_t head = std::min<size_t>(state.size() - 8, 4096);
    for (int i = 0; i < 150; ++i) {
      std::string bad = state;
      const size_t at = i < 130 ? rng() % head : rng() % (state.size() - 8);
      bad[at] = static_cast<char>(rng());
      Session s(llama(), options(spec, 8));
      try {
        s.load_state(resealed(bad));
        ++loaded;
        const std::vector<TokenId> tokens = test::random_tokens(3, 2);
        s.feed(std::span<const TokenId>(tokens.data(), 3));
      } catch (const FormatError&) {
        ++refused;
        EXPECT_EQ(s.n_past(), 0);
      } catch (const InvalidArgument&) {
        // A loaded stream may still reach a limit of the policy's when it goes on (a
        // position changed to one past what `full` can hold); it was counted as loaded.
      }
    }
    EXPECT_GT(refused, 0) << spec;
    EXPECT_EQ(loaded + refused, 150) << spec;
  }
}

TEST(SessionState, SeekSkipsAheadForPoliciesOfThePositionAlone) {
  Session s(llama(), options("sink:4+24", 8));
  const std::vector<TokenId> tokens = test::random_tokens(10, 4);
  s.feed(std::span<const TokenId>(tokens.data(), 10));
  s.seek(1'000'000);
  EXPECT_EQ(s.n_past(), 1'000'000);
  EXPECT_EQ(s.last_logits(), nullptr);
  s.feed(std::span<const TokenId>(tokens.data(), 5));
  EXPECT_EQ(s.n_past(), 1'000'005);
  EXPECT_EQ(s.cache().policy().slot_contents()[4 + (1'000'004 - 4) % (24 + 7)], 1'000'004);
  EXPECT_THROW(s.seek(10), InvalidArgument);  // backwards

  for (const char* spec : {"h2o:8+16", "recompute:16", "detected:4+16"}) {
    Session t(llama(), options(spec, 8));
    EXPECT_THROW(t.seek(100), InvalidArgument) << spec;
  }
  Session g(gemma(), options("sink:4+20", 8));  // native windows are seekable too
  g.seek(5000);
  g.feed(std::span<const TokenId>(tokens.data(), 3));
  EXPECT_EQ(g.n_past(), 5003);
}

}  // namespace
}  // namespace spillway
