// Byte-level BPE tokenizer on tiny vocabularies written as GGUF by the tests.
#include <gtest/gtest.h>

#include <optional>
#include <random>
#include <string>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"
#include "util/gguf_writer.h"

namespace spillway {
namespace {

// GPT-2's byte -> character mapping, written out independently of the library.
std::string byte_char(int b) {
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  int cpt = b;
  if (!printable) {
    int extra = 0;
    for (int x = 0; x < b; ++x) {
      const bool p = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
      if (!p) ++extra;
    }
    cpt = 256 + extra;
  }
  std::string s;
  if (cpt < 0x80) {
    s.push_back(static_cast<char>(cpt));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cpt >> 6)));
    s.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  }
  return s;
}

// The byte-encoded form of raw text ("a b" -> "aĠb").
std::string encoded(const std::string& raw) {
  std::string s;
  for (unsigned char c : raw) s += byte_char(c);
  return s;
}

constexpr TokenId kBos = 0, kEos = 1, kUser = 2, kTool = 3, kFirstByte = 4;
TokenId byte_id(unsigned char b) {
  return kFirstByte + b;
}

// Tokens: <s> </s> <|user|> (control), <tool> (user-defined), the 256 bytes, then one
// token per merge result (in merge order, duplicates skipped), then `extra`.
struct TinyVocab {
  std::string model = "gpt2";
  std::string pre = "gpt2";
  std::vector<std::string> merges;  // raw text "left right", e.g. "a b" or " w" pairs
  std::optional<bool> add_bos;
  bool with_bos_id = true;
  bool bad_type_count = false;

  std::vector<std::string> tokens() const {
    std::vector<std::string> t = {"<s>", "</s>", "<|user|>", "<tool>"};
    for (int b = 0; b < 256; ++b) t.push_back(byte_char(b));
    for (const auto& m : merges) {
      const auto sp = m.find(' ', 1);
      const std::string joined = m.substr(0, sp) + m.substr(sp + 1);
      if (std::find(t.begin(), t.end(), joined) == t.end()) t.push_back(joined);
    }
    return t;
  }

  std::unique_ptr<Tokenizer> build(std::unique_ptr<gguf::GgufFile>& holder) const {
    test::GgufWriter w;
    w.add_str("general.architecture", "llama");
    w.add_str("tokenizer.ggml.model", model);
    w.add_str("tokenizer.ggml.pre", pre);
    const auto t = tokens();
    w.add_strings("tokenizer.ggml.tokens", t);
    std::vector<int32_t> types(t.size(), static_cast<int32_t>(TokenType::Normal));
    types[kBos] = types[kEos] = types[kUser] = static_cast<int32_t>(TokenType::Control);
    types[kTool] = static_cast<int32_t>(TokenType::UserDefined);
    if (bad_type_count) types.pop_back();
    w.add_i32s("tokenizer.ggml.token_type", types);
    w.add_strings("tokenizer.ggml.merges", merges);
    if (with_bos_id) w.add_u32("tokenizer.ggml.bos_token_id", kBos);
    w.add_u32("tokenizer.ggml.eos_token_id", kEos);
    if (add_bos) w.add_bool("tokenizer.ggml.add_bos_token", *add_bos);
    holder = gguf::GgufFile::from_bytes(w.bytes(), "tiny.gguf");
    return Tokenizer::from_gguf(*holder);
  }
};

// Merges in the byte-encoded spelling the file stores.
std::string merge(const std::string& left, const std::string& right) {
  return encoded(left) + " " + encoded(right);
}

class TinyTokenizer {
 public:
  explicit TinyTokenizer(const TinyVocab& v) : tok_(v.build(file_)) {}
  Tokenizer& operator*() { return *tok_; }
  Tokenizer* operator->() { return tok_.get(); }
  TokenId id(const std::string& raw) {
    auto id = tok_->find(encoded(raw));
    EXPECT_TRUE(id.has_value()) << "no token for '" << raw << "'";
    return id.value_or(-1);
  }
  std::vector<TokenId> bytes(const std::string& raw) {
    std::vector<TokenId> ids;
    for (unsigned char c : raw) ids.push_back(byte_id(c));
    return ids;
  }

 private:
  std::unique_ptr<gguf::GgufFile> file_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST(Tokenizer, MergesAppliedByRank) {
  {
    TinyVocab v;
    v.merges = {merge("b", "c"), merge("a", "b")};
    TinyTokenizer t(v);
    EXPECT_EQ(t->encode("abc"), (std::vector<TokenId>{byte_id('a'), t.id("bc")}));
  }
  {
    TinyVocab v;
    v.merges = {merge("a", "b"), merge("b", "c")};
    TinyTokenizer t(v);
    EXPECT_EQ(t->encode("abc"), (std::vector<TokenId>{t.id("ab"), byte_id('c')}));
  }
  {
    TinyVocab v;
    v.merges = {merge("h", "e"), merge("l", "l"), merge("he", "ll"), merge("hell", "o"),
                merge(" ", "w")};
    TinyTokenizer t(v);
    EXPECT_EQ(t->encode("hello"), std::vector<TokenId>{t.id("hello")});
    EXPECT_EQ(t->encode("hello wow"),
              (std::vector<TokenId>{t.id("hello"), t.id(" w"), byte_id('o'), byte_id('w')}));
    // Merges stop where no ranked pair is left.
    EXPECT_EQ(t->encode("hel lo"), (std::vector<TokenId>{t.id("he"), byte_id('l'), byte_id(' '),
                                                         byte_id('l'), byte_id('o')}));
  }
  {
    // Equal ranks: the leftmost pair merges first.
    TinyVocab v;
    v.merges = {merge("a", "a")};
    TinyTokenizer t(v);
    EXPECT_EQ(t->encode("aaa"), (std::vector<TokenId>{t.id("aa"), byte_id('a')}));
    EXPECT_EQ(t->encode("aaaa"), (std::vector<TokenId>{t.id("aa"), t.id("aa")}));
  }
}

TEST(Tokenizer, EveryByteValue) {
  TinyVocab v;
  TinyTokenizer t(v);
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    EXPECT_EQ(t->token_bytes(byte_id(b)), one);
    const TokenId id = byte_id(b);
    EXPECT_EQ(t->decode(std::span<const TokenId>(&id, 1)), one);
    EXPECT_EQ(t->piece(byte_id(b)), byte_char(b));
    if (b < 0x80) {
      EXPECT_EQ(t->encode(one), std::vector<TokenId>{byte_id(b)}) << "byte " << b;
    } else {
      // Alone, a byte >= 0x80 is not UTF-8: it is read as U+FFFD, as llama.cpp does.
      EXPECT_EQ(t->encode(one), t.bytes("\xEF\xBF\xBD")) << "byte " << b;
    }
  }
  // Inside well-formed characters every byte that UTF-8 uses maps to its own token.
  for (int lead = 0xC2; lead <= 0xDF; ++lead) {
    for (int cont = 0x80; cont <= 0xBF; ++cont) {
      const std::string s{static_cast<char>(lead), static_cast<char>(cont)};
      ASSERT_EQ(t->encode(s), t.bytes(s));
    }
  }
  for (const std::string s : {"\xE0\xA0\x80", "\xED\x9F\xBF", "\xEF\xBF\xBF", "\xF0\x90\x80\x80",
                              "\xF4\x8F\xBF\xBF", "\xF3\xA0\x80\x81"}) {
    EXPECT_EQ(t->encode(s), t.bytes(s));
    EXPECT_EQ(t->decode(t->encode(s)), s);
  }
}

TEST(Tokenizer, InvalidUtf8NeverFails) {
  TinyVocab v;
  v.merges = {merge("a", "b"), merge(" ", "a")};
  TinyTokenizer t(v);
  // Overlong '/' is read as '/', a truncated sequence as U+FFFD.
  EXPECT_EQ(t->encode("x\xC0\xAFy"), t.bytes("x/y"));
  EXPECT_EQ(t->encode("x\xC3"), t.bytes("x\xEF\xBF\xBD"));
  std::mt19937 rng(1234);
  for (int i = 0; i < 500; ++i) {
    std::string s(rng() % 24, '\0');
    for (auto& c : s) c = static_cast<char>(rng() % 256);
    const auto ids = t->encode(s);
    for (TokenId id : ids) ASSERT_TRUE(id >= 0 && id < t->vocab_size());
    (void)t->decode(ids);
  }
}

TEST(Tokenizer, SpecialTokens) {
  TinyVocab v;
  TinyTokenizer t(v);
  EncodeOptions on;
  on.parse_special = true;
  EXPECT_EQ(t->encode("x<|user|>y", on), (std::vector<TokenId>{byte_id('x'), kUser, byte_id('y')}));
  EXPECT_EQ(t->encode("<|user|><|user|>", on), (std::vector<TokenId>{kUser, kUser}));
  EXPECT_EQ(t->encode("<s></s>", on), (std::vector<TokenId>{kBos, kEos}));
  // Off: the text is plain text.
  EXPECT_EQ(t->encode("x<|user|>y"), t.bytes("x<|user|>y"));
  // User-defined tokens are recognized either way (as llama.cpp does).
  EXPECT_EQ(t->encode("a<tool>b"), (std::vector<TokenId>{byte_id('a'), kTool, byte_id('b')}));
  EXPECT_EQ(t->encode("a<tool>b", on), (std::vector<TokenId>{byte_id('a'), kTool, byte_id('b')}));
  // Control tokens vanish from decoded text unless asked for.
  const std::vector<TokenId> ids = {kBos, byte_id('h'), kUser, kTool, byte_id('i'), kEos};
  EXPECT_EQ(t->decode(ids), "h<tool>i");
  EXPECT_EQ(t->decode(ids, true), "<s>h<|user|><tool>i</s>");
  EXPECT_TRUE(t->is_eog(kEos));
  EXPECT_FALSE(t->is_eog(kBos));
  EXPECT_EQ(t->token_type(kUser), TokenType::Control);
  EXPECT_EQ(t->token_type(kTool), TokenType::UserDefined);
  EXPECT_THROW(t->piece(t->vocab_size()), InvalidArgument);
  EXPECT_THROW(t->decode(std::vector<TokenId>{-1}), InvalidArgument);
}

TEST(Tokenizer, BosHandling) {
  {
    TinyVocab v;  // no add_bos_token key: no BOS for gpt2-style pre-tokenizers
    TinyTokenizer t(v);
    EXPECT_FALSE(t->add_bos());
    EXPECT_EQ(t->encode("a"), std::vector<TokenId>{byte_id('a')});
    EncodeOptions o;
    o.add_bos = true;
    EXPECT_EQ(t->encode("a", o), (std::vector<TokenId>{kBos, byte_id('a')}));
    EXPECT_EQ(t->encode("", o), std::vector<TokenId>{kBos});
    o.add_eos = true;
    EXPECT_EQ(t->encode("a", o), (std::vector<TokenId>{kBos, byte_id('a'), kEos}));
  }
  {
    TinyVocab v;
    v.add_bos = true;
    TinyTokenizer t(v);
    EXPECT_TRUE(t->add_bos());
    EXPECT_EQ(t->encode("a"), (std::vector<TokenId>{kBos, byte_id('a')}));
    EncodeOptions o;
    o.add_bos = false;
    EXPECT_EQ(t->encode("a", o), std::vector<TokenId>{byte_id('a')});
  }
  {
    TinyVocab v;
    v.pre = "llama-bpe";  // Llama 3 adds BOS unless the metadata says otherwise
    TinyTokenizer t(v);
    EXPECT_TRUE(t->add_bos());
  }
  {
    TinyVocab v;
    v.with_bos_id = false;
    TinyTokenizer t(v);
    EncodeOptions o;
    o.add_bos = true;
    EXPECT_EQ(t->bos(), std::nullopt);
    EXPECT_THROW(t->encode("a", o), InvalidArgument);
  }
}

TEST(Tokenizer, PreTokenizers) {
  const std::vector<std::string> merges = {merge("1", "2"), merge("12", "3"), merge(" ", " "),
                                           merge("'", "s"), merge(" ", "a")};
  auto run = [&](const std::string& pre, const std::string& text) {
    TinyVocab v;
    v.pre = pre;
    v.merges = merges;
    TinyTokenizer t(v);
    EncodeOptions o;
    o.add_bos = false;
    return t->encode(text, o);
  };
  TinyVocab v;
  v.merges = merges;
  TinyTokenizer t(v);
  const TokenId d1 = byte_id('1'), d2 = byte_id('2'), d3 = byte_id('3'), d4 = byte_id('4');
  // Numbers: one piece (gpt2), digit by digit (smollm, qwen2), up to three (llama3).
  EXPECT_EQ(run("gpt2", "1234"), (std::vector<TokenId>{t.id("123"), d4}));
  EXPECT_EQ(run("smollm", "1234"), (std::vector<TokenId>{d1, d2, d3, d4}));
  EXPECT_EQ(run("qwen2", "1234"), (std::vector<TokenId>{d1, d2, d3, d4}));
  EXPECT_EQ(run("llama3", "12341"), (std::vector<TokenId>{t.id("123"), d4, d1}));
  // Contractions are pieces of their own.
  EXPECT_EQ(run("gpt2", "it's"), (std::vector<TokenId>{byte_id('i'), byte_id('t'), t.id("'s")}));
  // A space run before a word leaves its last space to the word.
  EXPECT_EQ(run("gpt2", "b   a"), (std::vector<TokenId>{byte_id('b'), t.id("  "), t.id(" a")}));
  EXPECT_EQ(run("gpt2", "b  "), (std::vector<TokenId>{byte_id('b'), t.id("  ")}));
  EXPECT_EQ(run("smollm", "1  a"), (std::vector<TokenId>{d1, byte_id(' '), t.id(" a")}));
  EXPECT_EQ(run("default", "12"), (std::vector<TokenId>{t.id("12")}));
}

TEST(Tokenizer, RejectsUnknownModelsAndBadMetadata) {
  {
    TinyVocab v;
    v.pre = "no-such-pre";
    std::unique_ptr<gguf::GgufFile> f;
    try {
      v.build(f);
      FAIL() << "expected UnsupportedError";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("no-such-pre"), std::string::npos) << e.what();
    }
  }
  {
    TinyVocab v;
    v.model = "bert";
    std::unique_ptr<gguf::GgufFile> f;
    EXPECT_THROW(v.build(f), UnsupportedError);
  }
  {
    TinyVocab v;
    v.bad_type_count = true;
    std::unique_ptr<gguf::GgufFile> f;
    EXPECT_THROW(v.build(f), FormatError);
  }
}

TEST(StreamDecoder, HoldsBackPartialCharacters) {
  TinyVocab v;
  TinyTokenizer t(v);
  StreamDecoder dec(*t);
  // "é" = C3 A9 arrives as two byte tokens.
  EXPECT_EQ(dec.push(byte_id('a')), "a");
  EXPECT_EQ(dec.push(byte_id(0xC3)), "");
  EXPECT_EQ(dec.push(byte_id(0xA9)), "\xC3\xA9");
  // A four-byte emoji, byte by byte; control tokens in between print nothing.
  const std::string grin = "\xF0\x9F\x98\x80";
  std::string out;
  for (size_t i = 0; i < grin.size(); ++i) {
    out += dec.push(byte_id(static_cast<unsigned char>(grin[i])));
    if (i + 1 < grin.size()) {
      EXPECT_EQ(out, "");
    }
    if (i == 1) {
      EXPECT_EQ(dec.push(kEos), "");
    }
  }
  EXPECT_EQ(out, grin);
  EXPECT_EQ(dec.flush(), "");
  // An invalid byte is emitted as U+FFFD right away; a dangling lead byte on flush.
  EXPECT_EQ(dec.push(byte_id(0xFF)), "\xEF\xBF\xBD");
  EXPECT_EQ(dec.push(byte_id(0xE2)), "");
  EXPECT_EQ(dec.push(byte_id(0x82)), "");
  EXPECT_EQ(dec.push(byte_id('x')), "\xEF\xBF\xBDx");
  EXPECT_EQ(dec.push(byte_id(0xE2)), "");
  EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace spillway
