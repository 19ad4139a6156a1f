// The one generation loop (session/generate.h): stop strings, UTF-8 held back across
// tokens, the stop reasons, the lazy feeding of sampled tokens, and the front ends built on
// it (generate(), Chat, the serve scheduler) giving the same pieces for the same tokens.
// A scripted sampler chooses the tokens, so every case is exact.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/serve/scheduler.h"
#include "spillway/session/batch.h"
#include "spillway/session/chat.h"
#include "spillway/session/generate.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

// The tiny vocabulary: ids 0..255 are the bytes, 259 <|endoftext|> (EOS), 261 <|im_end|>.
constexpr TokenId kEos = 259;

// Returns the script's tokens in order (then EOS), and records what it was told.
class ScriptedSampler : public Sampler {
 public:
  explicit ScriptedSampler(std::vector<TokenId> script) : script_(std::move(script)) {}
  TokenId sample(const float* logits, int64_t n_vocab) override {
    EXPECT_NE(logits, nullptr);
    ++sampled_;
    return next_ < script_.size() ? script_[next_++] : kEos;
  }
  void accept(TokenId id) override { accepted_.push_back(id); }
  const std::vector<TokenId>& accepted() const { return accepted_; }
  int sampled() const { return sampled_; }

 private:
  std::vector<TokenId> script_;
  size_t next_ = 0;
  int sampled_ = 0;
  std::vector<TokenId> accepted_;
};

// Byte tokens of a text.
std::vector<TokenId> bytes_of(std::string_view s) {
  std::vector<TokenId> ids;
  for (unsigned char c : s) ids.push_back(static_cast<TokenId>(c));
  return ids;
}

// With an output matrix of its own (a tied one makes the tiny model repeat its last token).
const model::Model& tiny() {
  static const auto m = [] {
    test::TinyModelSpec spec;
    spec.tied_output = false;
    return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "gen.gguf"));
  }();
  return *m;
}

SessionOptions opts(const std::string& spec = "full") {
  SessionOptions o;
  o.policy = kv::PolicySpec(spec);
  o.threads = 1;
  return o;
}

// "ok 😀 END more": the emoji is 4 byte tokens, the stop string "END" 3.
const std::string kEmoji = "\xF0\x9F\x98\x80";
const std::string kScript = "ok " + kEmoji + " END more";

struct Outcome {
  std::vector<std::string> pieces;
  std::string text;
  StopReason stop = StopReason::kNone;
};

Outcome run_generator(Generator& gen) {
  Outcome r;
  while (auto p = gen.next()) r.pieces.push_back(p->text);
  r.text = gen.text();
  r.stop = gen.stop_reason();
  return r;
}

TEST(StopMatcher, HoldsBackPartialStops) {
  StopMatcher m({"END", "\n\n"});
  EXPECT_EQ(m.push("Hello"), "Hello");
  EXPECT_EQ(m.push(" E"), " ");  // "E" may start "END"
  EXPECT_EQ(m.push("x"), "Ex");  // it did not
  EXPECT_EQ(m.push("EN"), "");
  EXPECT_EQ(m.push("D and more"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("later"), "");
  EXPECT_EQ(m.finish(), "");

  StopMatcher n({"\n\n"});
  EXPECT_EQ(n.push("a\n"), "a");
  EXPECT_EQ(n.push("b\nc\n"), "\nb\nc");
  EXPECT_EQ(n.push("\nrest"), "");
  EXPECT_TRUE(n.stopped());

  StopMatcher none;
  EXPECT_EQ(none.push("x"), "x");
  EXPECT_EQ(none.finish(), "");

  StopMatcher tail({"STOP"});
  EXPECT_EQ(tail.push("ab ST"), "ab ");
  EXPECT_EQ(tail.finish(), "ST");  // generation ended otherwise: nothing is lost

  EXPECT_THROW(StopMatcher({"ok", ""}), InvalidArgument);
}

TEST(StopMatcher, FindsStopsAcrossPiecesAndNeverEndsInsideACharacter) {
  StopMatcher m({"<end>"});
  std::string out;
  for (const char* p : {"one <", "e", "nd", "> two"}) out += m.push(p);
  EXPECT_EQ(out, "one ");
  EXPECT_TRUE(m.stopped());

  // A stop string that begins like a character's bytes holds back nothing of it; the
  // character goes out whole once complete.
  StopMatcher u({"\xF0\x9F\x98\x81"});  // U+1F601, shares 3 bytes with U+1F600
  EXPECT_EQ(u.push("a\xF0\x9F"), "a");
  EXPECT_EQ(u.push("\x98"), "");
  EXPECT_EQ(u.push("\x80"), kEmoji);
  EXPECT_FALSE(u.stopped());
}

TEST(Generator, StopStringAcrossTokensAndACharacterAcrossTokens) {
  Session s(tiny(), opts());
  ScriptedSampler sampler(bytes_of(kScript));
  GenerateOptions go;
  go.max_new_tokens = 100;
  go.stop = {"END"};
  Generator gen(s, sampler, go);
  gen.feed(bytes_of("prompt"));
  const Outcome r = run_generator(gen);
  EXPECT_EQ(r.text, "ok " + kEmoji + " ");
  EXPECT_EQ(r.stop, StopReason::kStopString);
  // Each byte of the emoji is its own token: nothing comes out until the fourth, then all
  // of it; the "E" and "N" of the stop string never come out.
  std::vector<std::string> want = {"o", "k", " ", "", "", "", kEmoji, " ", "", "", ""};
  EXPECT_EQ(r.pieces, want);
  EXPECT_EQ(gen.tokens().size(), 11u);  // up to and including the D
  // The prompt and every sampled token went to the sampler, in stream order.
  std::vector<TokenId> told = bytes_of("prompt");
  for (TokenId t : gen.tokens()) told.push_back(t);
  EXPECT_EQ(sampler.accepted(), told);
  // Every sampled token but the last was fed; the last waits.
  EXPECT_EQ(s.n_past(), 6 + 10);
  ASSERT_EQ(gen.pending().size(), 1u);
  EXPECT_EQ(gen.pending()[0], static_cast<TokenId>('D'));
}

TEST(Generator, LengthEndOfGenerationAndTheHeldBackTail) {
  {
    // Cut inside the emoji: the held-back bytes come last, as U+FFFD.
    Session s(tiny(), opts());
    ScriptedSampler sampler(bytes_of(kScript));
    GenerateOptions go;
    go.max_new_tokens = 5;
    Generator gen(s, sampler, go);
    gen.feed(bytes_of("p"));
    const Outcome r = run_generator(gen);
    EXPECT_EQ(r.stop, StopReason::kLength);
    EXPECT_EQ(r.pieces, (std::vector<std::string>{"o", "k", " ", "", "", "\xEF\xBF\xBD"}));
    EXPECT_EQ(sampler.sampled(), 5);  // nothing sampled past the limit
    EXPECT_EQ(s.n_past(), 1 + 4);
  }
  {
    // EOS after the script: it ends the generation and is neither kept nor fed.
    Session s(tiny(), opts());
    ScriptedSampler sampler(bytes_of("hi"));
    Generator gen(s, sampler, {});
    gen.feed(bytes_of("p"));
    const Outcome r = run_generator(gen);
    EXPECT_EQ(r.stop, StopReason::kEndOfGeneration);
    EXPECT_EQ(r.text, "hi");
    EXPECT_EQ(gen.tokens(), bytes_of("hi"));
    EXPECT_EQ(s.n_past(), 3);  // p, h, i: the i was fed to sample the EOS
    EXPECT_TRUE(gen.pending().empty());
  }
  {
    // A stop string that generation never completes: its start comes out at the end.
    Session s(tiny(), opts());
    ScriptedSampler sampler(bytes_of("a EN"));
    GenerateOptions go;
    go.stop = {"END"};
    Generator gen(s, sampler, go);
    gen.feed(bytes_of("p"));
    const Outcome r = run_generator(gen);
    EXPECT_EQ(r.stop, StopReason::kEndOfGeneration);
    EXPECT_EQ(r.pieces, (std::vector<std::string>{"a", " ", "", "", "EN"}));
  }
  {
    // max_new_tokens 0 samples nothing.
    Session s(tiny(), opts());
    ScriptedSampler sampler(bytes_of("x"));
    GenerateOptions go;
    go.max_new_tokens = 0;
    Generator gen(s, sampler, go);
    gen.feed(bytes_of("p"));
    EXPECT_FALSE(gen.next().has_value());
    EXPECT_EQ(gen.stop_reason(), StopReason::kLength);
    EXPECT_EQ(sampler.sampled(), 0);
  }
}

TEST(Generator, CancelAndErrors) {
  Session s(tiny(), opts());
  ScriptedSampler sampler(bytes_of("ab" + kEmoji));
  Generator gen(s, sampler, {});
  EXPECT_THROW(gen.next(), InvalidArgument);  // nothing fed: no logits
  gen.feed(bytes_of("p"));
  EXPECT_EQ(gen.next()->text, "a");
  EXPECT_EQ(gen.next()->text, "b");
  EXPECT_EQ(gen.next()->text, "");  // the emoji's first byte, held back
  gen.cancel();
  EXPECT_FALSE(gen.next().has_value());  // the held-back byte is not handed out ...
  EXPECT_EQ(gen.stop_reason(), StopReason::kCancelled);
  EXPECT_EQ(gen.text(), "ab\xEF\xBF\xBD");  // ... but is part of the text

  GenerateOptions bad;
  bad.max_new_tokens = -1;
  EXPECT_THROW(Generator(s, sampler, bad), InvalidArgument);
  GenerateOptions empty_stop;
  empty_stop.stop = {""};
  EXPECT_THROW(Generator(s, sampler, empty_stop), InvalidArgument);
  SamplerParams bad_params;
  bad_params.temperature = -1;
  EXPECT_THROW(Generator(s, bad_params, {}), InvalidArgument);
}

// A generator whose pending token is fed by a BatchDecoder step ends each step where one
// that feeds itself does, bit for bit.
TEST(Generator, PendingTokensFedByABatchEqualFeedingThemAlone) {
  const model::Model& m = tiny();
  SamplerParams greedy;
  GenerateOptions go;
  go.max_new_tokens = 12;
  go.stop_at_eog = false;
  Session alone_a(m, opts()), alone_b(m, opts("sink:2+6"));
  Generator ga(alone_a, greedy, go), gb(alone_b, greedy, go);
  ga.feed(bytes_of("first prompt"));
  gb.feed(bytes_of("second"));
  const Outcome ra = run_generator(ga), rb = run_generator(gb);

  Session sa(m, opts()), sb(m, opts("sink:2+6"));
  Generator ba(sa, greedy, go), bb(sb, greedy, go);
  ba.feed(bytes_of("first prompt"));
  bb.feed(bytes_of("second"));
  BatchDecoder dec(m, 4, nullptr, 1);
  ASSERT_TRUE(ba.next().has_value());
  ASSERT_TRUE(bb.next().has_value());
  while (!ba.done() || !bb.done()) {
    std::vector<BatchDecoder::Entry> entries;
    std::vector<Generator*> stepped;
    for (Generator* g : {&ba, &bb}) {
      if (g->done()) continue;
      entries.push_back({&g->session(), g->pending()});
      stepped.push_back(g);
    }
    dec.step(entries);
    for (Generator* g : stepped) {
      g->mark_pending_fed();
      g->next();
    }
  }
  while (ba.next()) {  // the held-back tails
  }
  while (bb.next()) {
  }
  EXPECT_EQ(ba.tokens(), ga.tokens());
  EXPECT_EQ(bb.tokens(), gb.tokens());
  EXPECT_EQ(ba.text(), ra.text);
  EXPECT_EQ(bb.text(), rb.text);
  EXPECT_EQ(sa.n_past(), alone_a.n_past());
  EXPECT_EQ(sb.n_past(), alone_b.n_past());
}

// generate(), Chat and the serve scheduler hand out the same pieces for the same tokens:
// the stop string and the emoji split across tokens alike.
TEST(Generator, EveryFrontEndGivesTheSamePieces) {
  GenerateOptions go;
  go.max_new_tokens = 100;
  go.stop = {"END"};
  const std::string want = "ok " + kEmoji + " ";
  const std::vector<std::string> want_pieces = {"o", "k", " ", kEmoji, " "};  // non-empty

  {
    Session s(tiny(), opts());
    ScriptedSampler sampler(bytes_of(kScript));
    std::vector<std::string> pieces;
    const GenerateResult r =
        generate(s, bytes_of("prompt"), sampler, go, [&](TokenId, std::string_view t) {
          if (!t.empty()) pieces.emplace_back(t);
          return true;
        });
    EXPECT_EQ(r.text, want);
    EXPECT_EQ(pieces, want_pieces);
    EXPECT_EQ(r.stop_reason, StopReason::kStopString);
  }
  {
    Session s(tiny(), opts());
    ChatOptions co;
    co.generate = go;
    Chat chat(s, co);
    ScriptedSampler sampler(bytes_of(kScript));
    std::vector<std::string> pieces;
    const ChatReply r = chat.send("hello", sampler, [&](TokenId, std::string_view t) {
      if (!t.empty()) pieces.emplace_back(t);
      return true;
    });
    EXPECT_EQ(r.answer.text, want);
    EXPECT_EQ(pieces, want_pieces);
    EXPECT_EQ(r.answer.stop_reason, StopReason::kStopString);
    // The whole exchange is in the stream: the turn, the answer's 11 tokens, the closing.
    EXPECT_EQ(r.stream_tokens, r.prompt_tokens + 11 + r.closing_tokens);
  }
  {
    serve::SchedulerOptions so;
    so.threads = 1;
    so.policy = kv::PolicySpec("sink:4+60");
    serve::Scheduler sched(tiny(), so);
    serve::JobSpec spec;
    spec.prompt = bytes_of("prompt");
    spec.max_tokens = 100;
    spec.stop = {"END"};
    spec.sampler = std::make_unique<ScriptedSampler>(bytes_of(kScript));
    auto job = sched.submit(std::move(spec));
    std::vector<std::string> pieces;
    serve::Event done;
    for (;;) {
      auto e = job->next(std::chrono::seconds(30));
      ASSERT_TRUE(e.has_value()) << "the scheduler did not answer";
      if (e->kind == serve::Event::Kind::Text) pieces.push_back(e->text);
      if (e->kind == serve::Event::Kind::Error) FAIL() << e->text;
      if (e->kind == serve::Event::Kind::Done) {
        done = *e;
        break;
      }
    }
    EXPECT_EQ(pieces, want_pieces);
    EXPECT_EQ(done.stop, StopReason::kStopString);
    EXPECT_EQ(done.usage.completion_tokens, 11);
    EXPECT_EQ(done.usage.prompt_tokens, 6);
  }
}

TEST(Generator, StopReasonNames) {
  EXPECT_EQ(stop_reason_name(StopReason::kLength), "length");
  EXPECT_EQ(stop_reason_name(StopReason::kEndOfGeneration), "eog");
  EXPECT_EQ(stop_reason_name(StopReason::kStopString), "stop");
  EXPECT_EQ(stop_reason_name(StopReason::kCancelled), "cancelled");
  EXPECT_EQ(stop_reason_name(StopReason::kNone), "none");
}

}  // namespace
}  // namespace spillway
