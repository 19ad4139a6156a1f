// The tokenizers of the default model (byte-level BPE) and of Gemma 3 (SentencePiece)
// against llama.cpp's ids (tests/golden/smollm2/tokens.json and tests/golden/gemma3/tokens.json,
// written by scripts/make-golden.py).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"
#include "util/gguf_writer.h"
#include "util/paths.h"

namespace spillway {
namespace {

using nlohmann::json;

json load_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  return json::parse(f);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string corpus_file() {
  if (const char* p = std::getenv("SPILLWAY_CORPUS")) return p;
  return test::corpus_path();
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string to_hex(std::string_view bytes) {
  static const char* const kDigits = "0123456789abcdef";
  std::string out;
  for (char ch : bytes) {
    const auto b = static_cast<uint8_t>(ch);
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

std::string case_text(const json& c) {
  return c.contains("hex") ? from_hex(c["hex"].get<std::string>()) : c["text"].get<std::string>();
}

uint64_t fnv1a64(const std::vector<TokenId>& ids) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (TokenId id : ids) {
    const auto u = static_cast<uint32_t>(id);
    for (int k = 0; k < 4; ++k) {
      h ^= (u >> (8 * k)) & 0xFF;
      h *= 0x100000001B3ULL;
    }
  }
  return h;
}

std::string ids_str(const std::vector<TokenId>& ids) {
  std::string s;
  for (TokenId id : ids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(id);
  }
  return s;
}

// Every golden string encodes to llama.cpp's ids; prints how many matched.
void expect_cases_match(const Tokenizer& tok, const json& cases, const std::string& label,
                        int min_cases) {
  int n_ok = 0, n = 0;
  for (const auto& c : cases) {
    const std::string text = case_text(c);
    EncodeOptions opts;
    opts.parse_special = c["special"].get<bool>();
    opts.add_bos = c.value("add_special", false) ? std::nullopt : std::optional<bool>(false);
    const auto expected = c["ids"].get<std::vector<TokenId>>();
    const auto got = tok.encode(text, opts);
    ++n;
    if (got == expected) ++n_ok;
    EXPECT_EQ(ids_str(got), ids_str(expected)) << label << ", case " << c["name"];
  }
  EXPECT_GE(n, min_cases);
  std::printf("[ tokens ] %s: %d/%d golden strings match llama.cpp\n", label.c_str(), n_ok, n);
}

// llama.cpp's ids decode to what llama.cpp's decoder gives, with and without control
// tokens.
void expect_decodes_match(const Tokenizer& tok, const json& cases, const std::string& label) {
  int n = 0;
  for (const auto& c : cases) {
    const auto ids = c["ids"].get<std::vector<TokenId>>();
    EXPECT_EQ(to_hex(tok.decode(ids)), c["decode_hex"].get<std::string>())
        << label << ", case " << c["name"];
    EXPECT_EQ(to_hex(tok.decode(ids, /*keep_control=*/true)),
              c["decode_special_hex"].get<std::string>())
        << label << ", case " << c["name"];
    ++n;
  }
  EXPECT_GE(n, 1);
}

// decode(encode(text)) gives the text back (special tokens kept as their text).
void expect_round_trips(const Tokenizer& tok, const json& golden) {
  for (const auto& c : golden["cases"]) {
    if (c.contains("hex")) continue;  // not valid UTF-8: llama.cpp may rewrite it
    if (!c.value("roundtrip", true)) continue;
    const std::string text = case_text(c);
    EncodeOptions opts;
    opts.parse_special = c["special"].get<bool>();
    opts.add_bos = false;
    const auto ids = tok.encode(text, opts);
    EXPECT_EQ(tok.decode(ids, /*keep_control=*/true), text) << "case " << c["name"];
  }
}

// The whole corpus: the first ids, the count and the checksum of all ids.
void expect_corpus_matches(const Tokenizer& tok, const json& golden) {
  const std::string path = corpus_file();
  const std::string text = read_file(path);
  const auto& g = golden["corpus"];
  EncodeOptions opts;
  if (g.contains("add_bos")) opts.add_bos = g["add_bos"].get<bool>();
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok.encode(text, opts);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "[ tokens ] %s corpus: %zu bytes -> %zu tokens in %.2f s (%.0f tokens/s, %.1f MB/s)\n",
      golden["model"].get<std::string>().c_str(), text.size(), ids.size(), s, ids.size() / s,
      text.size() / s / 1e6);

  const auto prefix = g["prefix_ids"].get<std::vector<TokenId>>();
  ASSERT_GE(ids.size(), prefix.size());
  size_t first_diff = prefix.size();
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (ids[i] != prefix[i]) {
      first_diff = i;
      break;
    }
  }
  EXPECT_EQ(first_diff, prefix.size()) << "first difference at token " << first_diff;
  EXPECT_EQ(ids.size(), g["count"].get<size_t>());
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a64(ids)));
  EXPECT_EQ(std::string(hex), g["ids_fnv1a64"].get<std::string>()) << "ids of the whole corpus";
  EXPECT_EQ(tok.decode(ids), text);
}

class TokenizerGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    SPILLWAY_REQUIRE_FILE(test::default_model_path());
    golden_ = load_json(test::source_path("tests/golden/smollm2/tokens.json"));
    file_ = gguf::GgufFile::open(test::default_model_path());
    tok_ = Tokenizer::from_gguf(*file_);
  }
  json golden_;
  std::unique_ptr<gguf::GgufFile> file_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(TokenizerGolden, Metadata) {
  EXPECT_EQ(tok_->model_name(), "gpt2");
  EXPECT_EQ(tok_->pre_name(), "smollm");
  EXPECT_EQ(tok_->vocab_size(), 49152);
  EXPECT_FALSE(tok_->add_bos());
  EXPECT_EQ(tok_->bos(), 1);
  EXPECT_EQ(tok_->eos(), 2);
  EXPECT_TRUE(tok_->is_eog(2));  // <|im_end|>
  EXPECT_TRUE(tok_->is_eog(0));  // <|endoftext|>
  EXPECT_FALSE(tok_->is_eog(1));
  EXPECT_EQ(tok_->find("<|im_start|>"), 1);
  EXPECT_EQ(tok_->token_type(1), TokenType::Control);
}

TEST_F(TokenizerGolden, EveryStringMatchesLlamaCpp) {
  expect_cases_match(*tok_, golden_["cases"], golden_["model"].get<std::string>(), 60);
}

TEST_F(TokenizerGolden, RoundTrip) {
  expect_round_trips(*tok_, golden_);
}

TEST_F(TokenizerGolden, InvalidUtf8DecodesToReplacementCharacters) {
  // llama.cpp tokenizes each invalid byte as U+FFFD; decoding shows it.
  const auto ids = tok_->encode(std::string("a\x80z"));
  EXPECT_EQ(tok_->decode(ids), "a\xEF\xBF\xBDz");
}

TEST_F(TokenizerGolden, CorpusMatchesLlamaCpp) {
  SPILLWAY_REQUIRE_FILE(corpus_file());
  expect_corpus_matches(*tok_, golden_);
}

// Gemma 3 270M: SentencePiece vocabulary of 262,144 tokens with byte fallback.
class TokenizerGoldenGemma3 : public ::testing::Test {
 protected:
  void SetUp() override {
    SPILLWAY_REQUIRE_FILE(test::gemma3_model_path());
    golden_ = load_json(test::source_path("tests/golden/gemma3/tokens.json"));
    file_ = gguf::GgufFile::open(test::gemma3_model_path());
    const auto t0 = std::chrono::steady_clock::now();
    tok_ = Tokenizer::from_gguf(*file_);
    load_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  json golden_;
  std::unique_ptr<gguf::GgufFile> file_;
  std::unique_ptr<Tokenizer> tok_;
  double load_s_ = 0;
};

TEST_F(TokenizerGoldenGemma3, Metadata) {
  std::printf("[ tokens ] gemma3 tokenizer built from the opened file in %.1f ms\n", load_s_ * 1e3);
  EXPECT_LT(load_s_, 5.0);  // about 0.05 s in a release build, 0.9 s with sanitizers
  EXPECT_EQ(tok_->model_name(), "llama");
  EXPECT_EQ(tok_->vocab_size(), 262144);
  EXPECT_TRUE(tok_->add_bos());
  EXPECT_EQ(tok_->bos(), 2);
  EXPECT_EQ(tok_->eos(), 1);
  EXPECT_EQ(golden_["bos_id"].get<TokenId>(), 2);
  EXPECT_TRUE(tok_->is_eog(1));    // <eos>
  EXPECT_TRUE(tok_->is_eog(106));  // <end_of_turn>
  EXPECT_FALSE(tok_->is_eog(105));
  EXPECT_EQ(tok_->find("<start_of_turn>"), 105);
  EXPECT_EQ(tok_->token_type(105), TokenType::Control);
  EXPECT_EQ(tok_->token_type(107), TokenType::UserDefined);  // "\n"
  EXPECT_EQ(tok_->token_type(248), TokenType::Byte);         // <0x0A>
  EXPECT_EQ(tok_->token_bytes(248), "\n");
  EXPECT_EQ(tok_->token_bytes(*tok_->find("\xE2\x96\x81the")), " the");
  // A prompt starts with BOS by default.
  EXPECT_EQ(tok_->encode("Hi").front(), 2);
}

TEST_F(TokenizerGoldenGemma3, EveryStringMatchesLlamaCpp) {
  expect_cases_match(*tok_, golden_["cases"], golden_["model"].get<std::string>(), 90);
}

TEST_F(TokenizerGoldenGemma3, DecodeMatchesLlamaCpp) {
  expect_decodes_match(*tok_, golden_["cases"], golden_["model"].get<std::string>());
}

// The same vocabulary saying add_space_prefix = true (the Llama 2 style): a space in
// front of the text and after each special token; decode drops it again.
TEST_F(TokenizerGoldenGemma3, SpacePrefixVariantMatchesLlamaCpp) {
  test::GgufWriter w;
  const auto& meta = file_->metadata();
  for (const auto& key : meta.keys()) {
    if (key == "tokenizer.ggml.add_space_prefix") continue;
    if (key.starts_with("tokenizer.") || key == "general.architecture") {
      w.add(key, *meta.value(key));
    }
  }
  w.add_bool("tokenizer.ggml.add_space_prefix", true);
  const auto variant = gguf::GgufFile::from_bytes(w.bytes(), "gemma3-space-prefix.gguf");
  const auto tok = Tokenizer::from_gguf(*variant);
  const auto& cases = golden_["space_prefix_variant"]["cases"];
  expect_cases_match(*tok, cases, "gemma3 vocabulary with add_space_prefix", 90);
  expect_decodes_match(*tok, cases, "gemma3 vocabulary with add_space_prefix");
  EncodeOptions o;
  o.add_bos = false;
  EXPECT_EQ(tok->decode(tok->encode("Hello world", o)), "Hello world");
}

TEST_F(TokenizerGoldenGemma3, RoundTrip) {
  expect_round_trips(*tok_, golden_);
}

TEST_F(TokenizerGoldenGemma3, ChatTurn) {
  EncodeOptions on;
  on.parse_special = true;
  const std::string turn = "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n";
  const auto ids = tok_->encode(turn, on);
  ASSERT_GE(ids.size(), 8u);
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], 105);
  EXPECT_EQ(tok_->decode(ids),
            "user\nhi\n"
            "model\n");
  EXPECT_EQ(tok_->decode(ids, true), "<bos>" + turn);
}

TEST_F(TokenizerGoldenGemma3, LongTextWithoutSpaces) {
  // 100 KB without a space or newline: one fragment for the merge loop.
  std::string text;
  const std::string word = "Pneumonoultramicroscopicsilicovolcanoconiosis";
  while (text.size() < 100 * 1024) text += word;
  EncodeOptions opts;
  opts.add_bos = false;
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok_->encode(text, opts);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ tokens ] gemma3: %zu bytes without spaces -> %zu tokens in %.1f ms\n", text.size(),
              ids.size(), s * 1e3);
  EXPECT_EQ(tok_->decode(ids), text);
  EXPECT_LT(s, 5.0);  // about 30 ms in a release build, 1.3 s with sanitizers
}

TEST_F(TokenizerGoldenGemma3, CorpusMatchesLlamaCpp) {
  SPILLWAY_REQUIRE_FILE(corpus_file());
  expect_corpus_matches(*tok_, golden_);
}

}  // namespace
}  // namespace spillway
