// SentencePiece-style tokenizer ("llama" vocabularies) on tiny vocabularies written as
// GGUF by the tests.
#include <gtest/gtest.h>

#include "tokenizer/spm_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"
#include "util/gguf_writer.h"

namespace spillway {
namespace {

const std::string kMark = "\xE2\x96\x81";  // U+2581

// "a b" -> "a▁b": the spelling the vocabulary uses.
std::string esc(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ' ')
      out += kMark;
    else
      out.push_back(c);
  }
  return out;
}

constexpr TokenId kUnk = 0, kBos = 1, kEos = 2, kCtl = 3, kUser = 4, kUnused = 5, kFirstByte = 6;

// Tokens: <unk> (unknown), <s>, </s>, <|ctl|> (control), <tool> (user-defined), <unused>
// (unused), then the 256 byte tokens (score 0) unless without_bytes, then `pieces` with
// their scores (written with spaces, stored with U+2581), then `user_defined`.
struct SpmVocab {
  std::string model = "llama";
  std::vector<std::pair<std::string, float>> pieces;
  std::vector<std::string> user_defined;
  std::optional<bool> add_space_prefix = false;
  std::optional<bool> add_bos = false;
  std::optional<bool> add_eos;
  bool without_bytes = false;
  bool with_scores = true;
  int score_count_delta = 0;  // != 0: a scores array of the wrong length
  bool nan_score = false;
  bool string_scores = false;

  std::vector<std::string> tokens() const {
    std::vector<std::string> t = {"<unk>", "<s>", "</s>", "<|ctl|>", "<tool>", "<unused>"};
    if (!without_bytes) {
      for (int b = 0; b < 256; ++b) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", b);
        t.push_back(buf);
      }
    }
    for (const auto& [p, s] : pieces) t.push_back(esc(p));
    for (const auto& u : user_defined) t.push_back(u);
    return t;
  }

  std::unique_ptr<Tokenizer> build(std::unique_ptr<gguf::GgufFile>& holder) const {
    test::GgufWriter w;
    w.add_str("general.architecture", "llama");
    w.add_str("tokenizer.ggml.model", model);
    const auto t = tokens();
    w.add_strings("tokenizer.ggml.tokens", t);
    std::vector<float> scores(t.size(), -1000.0f);
    std::vector<int32_t> types(t.size(), static_cast<int32_t>(TokenType::Normal));
    types[kUnk] = static_cast<int32_t>(TokenType::Unknown);
    types[kBos] = types[kEos] = types[kCtl] = static_cast<int32_t>(TokenType::Control);
    types[kUser] = static_cast<int32_t>(TokenType::UserDefined);
    types[kUnused] = static_cast<int32_t>(TokenType::Unused);
    size_t i = kFirstByte;
    if (!without_bytes) {
      for (int b = 0; b < 256; ++b, ++i) {
        types[i] = static_cast<int32_t>(TokenType::Byte);
        scores[i] = 0.0f;
      }
    }
    for (const auto& [p, s] : pieces) scores[i++] = s;
    for (size_t k = 0; k < user_defined.size(); ++k, ++i) {
      types[i] = static_cast<int32_t>(TokenType::UserDefined);
    }
    if (nan_score) scores[kFirstByte] = std::numeric_limits<float>::quiet_NaN();
    scores.resize(static_cast<size_t>(static_cast<int>(scores.size()) + score_count_delta));
    if (string_scores) {
      w.add_strings("tokenizer.ggml.scores", {"1"});
    } else if (with_scores) {
      w.add_f32s("tokenizer.ggml.scores", scores);
    }
    w.add_i32s("tokenizer.ggml.token_type", types);
    w.add_u32("tokenizer.ggml.bos_token_id", kBos);
    w.add_u32("tokenizer.ggml.eos_token_id", kEos);
    w.add_u32("tokenizer.ggml.unknown_token_id", kUnk);
    if (add_bos) w.add_bool("tokenizer.ggml.add_bos_token", *add_bos);
    if (add_eos) w.add_bool("tokenizer.ggml.add_eos_token", *add_eos);
    if (add_space_prefix) w.add_bool("tokenizer.ggml.add_space_prefix", *add_space_prefix);
    holder = gguf::GgufFile::from_bytes(w.bytes(), "tiny-spm.gguf");
    return Tokenizer::from_gguf(*holder);
  }
};

class Spm {
 public:
  explicit Spm(const SpmVocab& v) : tok_(v.build(file_)) {}
  Tokenizer* operator->() { return tok_.get(); }
  Tokenizer& operator*() { return *tok_; }
  // Id of a piece written with plain spaces.
  TokenId id(const std::string& piece) {
    auto id = tok_->find(esc(piece));
    EXPECT_TRUE(id.has_value()) << "no token for '" << piece << "'";
    return id.value_or(-1);
  }
  static TokenId byte(unsigned char b) { return kFirstByte + b; }
  std::vector<TokenId> bytes(const std::string& raw) {
    std::vector<TokenId> ids;
    for (unsigned char c : raw) ids.push_back(byte(c));
    return ids;
  }
  std::vector<TokenId> enc(const std::string& text, bool special = false) {
    EncodeOptions o;
    o.parse_special = special;
    return tok_->encode(text, o);
  }

 private:
  std::unique_ptr<gguf::GgufFile> file_;
  std::unique_ptr<Tokenizer> tok_;
};

using Ids = std::vector<TokenId>;

TEST(SpmTokenizer, Metadata) {
  SpmVocab v;
  v.add_bos = std::nullopt;
  Spm t(v);
  EXPECT_EQ(t->model_name(), "llama");
  EXPECT_TRUE(t->add_bos());  // the default for this kind
  EXPECT_EQ(t->bos(), kBos);
  EXPECT_EQ(t->eos(), kEos);
  EXPECT_TRUE(t->is_eog(kEos));
  EXPECT_FALSE(t->is_eog(kBos));
  EXPECT_EQ(t.enc("a").front(), kBos);
  EXPECT_EQ(t->token_type(Spm::byte('a')), TokenType::Byte);
  EXPECT_EQ(t->token_bytes(Spm::byte(0xFF)), "\xFF");
}

TEST(SpmTokenizer, MergesByScore) {
  {
    SpmVocab v;
    v.pieces = {{"a", -1}, {"b", -2}, {"c", -3}, {"ab", -4}, {"bc", -5}};
    Spm t(v);
    EXPECT_EQ(t.enc("abc"), (Ids{t.id("ab"), t.id("c")}));
  }
  {
    // The higher score wins even when its pair is further right.
    SpmVocab v;
    v.pieces = {{"a", -1}, {"b", -2}, {"c", -3}, {"ab", -5}, {"bc", -4}};
    Spm t(v);
    EXPECT_EQ(t.enc("abc"), (Ids{t.id("a"), t.id("bc")}));
  }
  {
    // Merges build on merges; a pair whose text is no token never merges.
    SpmVocab v;
    v.pieces = {{"h", -1},  {"e", -1},  {"l", -1},    {"o", -1},     {" ", -1},  {"w", -1},
                {"he", -2}, {"ll", -3}, {"hell", -4}, {"hello", -5}, {" w", -6}, {" wo", -7}};
    Spm t(v);
    EXPECT_EQ(t.enc("hello"), Ids{t.id("hello")});
    EXPECT_EQ(t.enc("hello wow"), (Ids{t.id("hello"), t.id(" wo"), t.id("w")}));
    EXPECT_EQ(t.enc("hel lo"), (Ids{t.id("he"), t.id("l"), t.id(" "), t.id("l"), t.id("o")}));
    // "hell" + "o" exists but "hello" only forms through ("hell", "o").
    EXPECT_EQ(t.enc("ohello"), (Ids{t.id("o"), t.id("hello")}));
  }
  {
    // Equal scores: the leftmost pair first.
    SpmVocab v;
    v.pieces = {{"a", -1}, {"aa", -2}};
    Spm t(v);
    EXPECT_EQ(t.enc("aaa"), (Ids{t.id("aa"), t.id("a")}));
    EXPECT_EQ(t.enc("aaaa"), (Ids{t.id("aa"), t.id("aa")}));
    EXPECT_EQ(t.enc("aaaaa"), (Ids{t.id("aa"), t.id("aa"), t.id("a")}));
  }
  {
    // Equal scores across different tokens: still the leftmost.
    SpmVocab v;
    v.pieces = {{"x", -1}, {"y", -1}, {"z", -1}, {"xy", -3}, {"yz", -3}};
    Spm t(v);
    EXPECT_EQ(t.enc("xyz"), (Ids{t.id("xy"), t.id("z")}));
  }
  {
    // Without scores every token scores 0: merges go left to right.
    SpmVocab v;
    v.with_scores = false;
    v.pieces = {{"a", 0}, {"b", 0}, {"c", 0}, {"ab", 0}, {"bc", 0}};
    Spm t(v);
    EXPECT_EQ(t.enc("abc"), (Ids{t.id("ab"), t.id("c")}));
  }
}

TEST(SpmTokenizer, SpacesAndSpacePrefix) {
  SpmVocab v;
  v.pieces = {{"a", -1}, {"b", -1}, {" ", -1}, {" a", -2}, {" b", -3}, {"  ", -4}};
  {
    Spm t(v);  // add_space_prefix false (as Gemma 3 says)
    EXPECT_EQ(t.enc("a b"), (Ids{t.id("a"), t.id(" b")}));
    EXPECT_EQ(t.enc(" a"), Ids{t.id(" a")});
    // " b" outscores "  ": the second space goes to the b.
    EXPECT_EQ(t.enc("a  b"), (Ids{t.id("a"), t.id(" "), t.id(" b")}));
    EXPECT_EQ(t.enc("a"), Ids{t.id("a")});
    EXPECT_EQ(t->decode(t.enc(" a b ")), " a b ");
  }
  for (std::optional<bool> prefix : {std::optional<bool>(true), std::optional<bool>()}) {
    SpmVocab w = v;
    w.add_space_prefix = prefix;  // absent: true, as llama.cpp assumes for this kind
    Spm t(w);
    EXPECT_EQ(t.enc("a b"), (Ids{t.id(" a"), t.id(" b")}));
    EXPECT_EQ(t.enc(" a"), (Ids{t.id(" "), t.id(" a")}));
    EXPECT_EQ(t.enc(""), Ids{});
    // The decoder drops the space it put in front.
    EXPECT_EQ(t->decode(t.enc("a b")), "a b");
    EXPECT_EQ(t->decode(t.enc(" a")), " a");
    EXPECT_EQ(t->decode(Ids{t.id(" b"), t.id(" a")}), "b a");
    // After special tokens the text gets the prefix again.
    EXPECT_EQ(t.enc("a<|ctl|>b", true), (Ids{t.id(" a"), kCtl, t.id(" b")}));
    EXPECT_EQ(t.enc("a<tool>b"), (Ids{t.id(" a"), kUser, t.id(" b")}));
    // Not when special parsing is off: the whole text is one fragment.
    const auto off = t.enc("a<|ctl|>b");
    EXPECT_EQ(off.front(), t.id(" a"));
    EXPECT_EQ(t->decode(off), "a<|ctl|>b");
  }
}

TEST(SpmTokenizer, DecodeLeadingSpaceFollowsTheReference) {
  SpmVocab v;
  v.add_space_prefix = true;
  v.add_bos = true;
  v.pieces = {{"a", -1}, {" a", -2}};
  Spm t(v);
  // BOS dropped in front: the space stays; kept: it prints and the space stays too.
  EXPECT_EQ(t->decode(Ids{kBos, t.id(" a")}), " a");
  EXPECT_EQ(t->decode(Ids{kBos, t.id(" a")}, true), "<s> a");
  EXPECT_EQ(t->decode(Ids{t.id(" a"), t.id(" a")}), "a a");
  // A space byte token first loses its space as well.
  EXPECT_EQ(t->decode(Ids{Spm::byte(' '), t.id("a")}), "a");
  // Streaming keeps every space.
  StreamDecoder dec(*t);
  EXPECT_EQ(dec.push(t.id(" a")), " a");
  EXPECT_EQ(dec.push(t.id(" a")), " a");
}

TEST(SpmTokenizer, ByteFallback) {
  SpmVocab v;
  v.pieces = {{"a", -1}, {"\xC3\xA9", -2}, {"ab", -3}, {" ", -4}};
  Spm t(v);
  // A character outside the vocabulary becomes its UTF-8 bytes.
  EXPECT_EQ(t.enc("\xE2\x82\xAC"), t.bytes("\xE2\x82\xAC"));
  EXPECT_EQ(t.enc("a\xF0\x9F\x98\x80"
                  "a"),
            (Ids{t.id("a"), Spm::byte(0xF0), Spm::byte(0x9F), Spm::byte(0x98), Spm::byte(0x80),
                 t.id("a")}));
  EXPECT_EQ(t.enc("\xC3\xA9"), Ids{t.id("\xC3\xA9")});
  // Ill-formed UTF-8 is kept: characters are cut by the lead byte's length class, so a
  // stray lead byte swallows what follows ("ab" is no longer seen as a pair).
  EXPECT_EQ(t.enc("\xE2"
                  "ab"),
            t.bytes("\xE2"
                    "ab"));
  EXPECT_EQ(t.enc("ab\xE2"), (Ids{t.id("ab"), Spm::byte(0xE2)}));
  EXPECT_EQ(t.enc("\x80"
                  "ab"),
            (Ids{Spm::byte(0x80), t.id("ab")}));
  EXPECT_EQ(t.enc("\xFF"
                  "abcd"),
            (Ids{Spm::byte(0xFF), Spm::byte('a'), Spm::byte('b'), Spm::byte('c'), Spm::byte('d')}));
  // Spaces are escaped first: a stray lead byte takes in part of the U+2581 after it.
  EXPECT_EQ(t.enc("\xE2 "), t.bytes("\xE2\xE2\x96\x81"));
  // Every byte value decodes to itself; random bytes (no spaces, see above) survive a
  // round trip.
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    const auto ids = t.enc(one);
    EXPECT_EQ(t->decode(ids), one) << "byte " << b;
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 40, '\0');
    for (auto& c : s) c = static_cast<char>("abx\xC3\xA9\xE2\x80\xFF<"[rng() % 9]);
    const auto ids = t.enc(s);
    for (TokenId id : ids) ASSERT_TRUE(id >= 0 && id < t->vocab_size());
    ASSERT_EQ(t->decode(ids), s);
  }
}

TEST(SpmTokenizer, UnknownWithoutByteTokens) {
  SpmVocab v;
  v.without_bytes = true;
  v.pieces = {{"a", -1}, {"b", -2}, {"\xC3", -3}};
  Spm t(v);
  // One unknown token per character that no token spells, whatever its length.
  EXPECT_EQ(t.enc("a\xE2\x82\xAC"
                  "b"),
            (Ids{t.id("a"), kUnk, t.id("b")}));
  EXPECT_EQ(t.enc("zz"), (Ids{kUnk, kUnk}));
  // A character that is no token, made of bytes that are one-character tokens.
  EXPECT_EQ(t.enc("\xC3"
                  "a"),
            (Ids{t.id("\xC3"), t.id("a")}));
  EXPECT_EQ(t.enc("\xC3"
                  "z"),
            Ids{kUnk});
  EXPECT_EQ(t->decode(t.enc("azb")), "ab");  // unknown prints nothing
  EXPECT_EQ(t->decode(t.enc("azb"), true), "a<unk>b");
}

TEST(SpmTokenizer, SpecialTokens) {
  SpmVocab v;
  v.pieces = {{"a", -1}, {"b", -1}, {"<", -1}, {">", -1}, {"s", -1}, {" ", -1}, {" b", -2}};
  v.user_defined = {"\n", "\n\n", "  ", "ab", "bcd"};
  Spm t(v);
  const TokenId nl = t.id("\n"), nl2 = t.id("\n\n"), sp2 = t->find("  ").value();
  // Control tokens only with special parsing; user-defined ones always.
  EXPECT_EQ(t.enc("a<s>b", true), (Ids{t.id("a"), kBos, t.id("b")}));
  EXPECT_EQ(t.enc("a<s>b").size(), 5u);
  EXPECT_EQ(t.enc("a<tool>b"), (Ids{t.id("a"), kUser, t.id("b")}));
  EXPECT_EQ(t.enc("a\n\n\nb"), (Ids{t.id("a"), nl2, nl, t.id("b")}));
  EXPECT_EQ(t.enc("a   b"), (Ids{t.id("a"), sp2, t.id(" b")}));
  // Longer special tokens claim their text first, even to the right of a shorter one.
  EXPECT_EQ(t.enc("abcd"), (Ids{t.id("a"), t->find("bcd").value()}));
  EXPECT_EQ(t.enc("abab"), (Ids{t->find("ab").value(), t->find("ab").value()}));
  // Decoding: control tokens only with keep_control; user-defined ones as their text.
  const Ids ids = {kBos, t.id("a"), kCtl, kUser, nl, kUnused, kEos};
  EXPECT_EQ(t->decode(ids), "a<tool>\n");
  EXPECT_EQ(t->decode(ids, true), "<s>a<|ctl|><tool>\n</s>");
  EXPECT_EQ(t->token_bytes(kUnused), "");
  EXPECT_THROW(t->decode(Ids{-1}), InvalidArgument);
  EXPECT_THROW(t->token_bytes(t->vocab_size()), InvalidArgument);
}

TEST(SpmTokenizer, BosEos) {
  SpmVocab v;
  v.add_bos = true;
  v.add_eos = true;
  v.pieces = {{"a", -1}};
  Spm t(v);
  EXPECT_EQ(t.enc("a"), (Ids{kBos, t.id("a"), kEos}));
  EXPECT_EQ(t.enc(""), (Ids{kBos, kEos}));
  EncodeOptions o;
  o.add_bos = false;
  o.add_eos = false;
  EXPECT_EQ(t->encode("a", o), Ids{t.id("a")});
  // Without keep_control the added BOS/EOS vanish, with it they print.
  EXPECT_EQ(t->decode(t.enc("a")), "a");
  EXPECT_EQ(t->decode(t.enc("a"), true), "<s>a</s>");
}

TEST(SpmTokenizer, LongInputIsNotQuadratic) {
  SpmVocab v;
  v.pieces = {{"a", -1}, {"b", -2}, {"ab", -3}, {"abab", -4}, {"ba", -5}};
  Spm t(v);
  // The merge loop's work, counted in heap comparisons (not seconds: the count does not
  // depend on the machine or its load).
  auto work = [&](size_t n) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s.push_back(i % 2 == 0 ? 'a' : 'b');
    const uint64_t before = tokenizer_detail::spm_comparisons();
    const auto ids = t.enc(s);
    const uint64_t used = tokenizer_detail::spm_comparisons() - before;
    EXPECT_EQ(ids.size(), n / 4);
    EXPECT_EQ(t->decode(ids), s);
    return static_cast<double>(used);
  };
  const double small = work(25'000);
  const double large = work(100'000);
  // Four times the text: n log n gives 4 (1 + log 4 / log 25000) = 4.55 times the
  // comparisons; quadratic would give 16.
  EXPECT_GT(small, 25'000);
  std::printf("heap comparisons: %.0f for 25K characters, %.0f for 100K\n", small, large);
  EXPECT_LT(large, 5.0 * small);
}

TEST(SpmTokenizer, RejectsBadMetadata) {
  {
    SpmVocab v;
    v.score_count_delta = -1;
    std::unique_ptr<gguf::GgufFile> f;
    try {
      v.build(f);
      FAIL() << "expected FormatError";
    } catch (const FormatError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("tokenizer.ggml.scores"), std::string::npos) << m;
      EXPECT_NE(m.find("tiny-spm.gguf"), std::string::npos) << m;
      EXPECT_NE(m.find("one per token"), std::string::npos) << m;
    }
  }
  {
    SpmVocab v;
    v.score_count_delta = 3;
    std::unique_ptr<gguf::GgufFile> f;
    EXPECT_THROW(v.build(f), FormatError);
  }
  {
    SpmVocab v;
    v.nan_score = true;
    std::unique_ptr<gguf::GgufFile> f;
    EXPECT_THROW(v.build(f), FormatError);
  }
  {
    SpmVocab v;
    v.string_scores = true;
    std::unique_ptr<gguf::GgufFile> f;
    EXPECT_THROW(v.build(f), FormatError);
  }
  {
    SpmVocab v;
    v.model = "t5";
    std::unique_ptr<gguf::GgufFile> f;
    try {
      v.build(f);
      FAIL() << "expected UnsupportedError";
    } catch (const UnsupportedError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("tokenizer.ggml.model"), std::string::npos) << m;
      EXPECT_NE(m.find("'t5'"), std::string::npos) << m;
      EXPECT_NE(m.find("gpt2"), std::string::npos) << m;
      EXPECT_NE(m.find("llama"), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace spillway
