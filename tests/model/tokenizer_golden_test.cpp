// The tokenizer of the default model against llama.cpp's ids (tests/golden/tokens.json,
// written by scripts/make-golden.py).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"
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
  for (TokenId id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

class TokenizerGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    SPILLWAY_REQUIRE_FILE(test::default_model_path());
    golden_ = load_json(test::source_path("tests/golden/tokens.json"));
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
  int n_ok = 0, n = 0;
  for (const auto& c : golden_["cases"]) {
    const std::string text = case_text(c);
    EncodeOptions opts;
    opts.parse_special = c["special"].get<bool>();
    opts.add_bos = c.value("add_special", false) ? std::nullopt : std::optional<bool>(false);
    const auto expected = c["ids"].get<std::vector<TokenId>>();
    const auto got = tok_->encode(text, opts);
    ++n;
    if (got == expected) ++n_ok;
    EXPECT_EQ(ids_str(got), ids_str(expected)) << "case " << c["name"];
  }
  EXPECT_GE(n, 60);
  std::printf("[ tokens ] %d/%d golden strings match llama.cpp\n", n_ok, n);
}

TEST_F(TokenizerGolden, RoundTrip) {
  for (const auto& c : golden_["cases"]) {
    if (c.contains("hex")) continue;  // not valid UTF-8: llama.cpp rewrites it
    const std::string text = case_text(c);
    EncodeOptions opts;
    opts.parse_special = c["special"].get<bool>();
    opts.add_bos = false;
    const auto ids = tok_->encode(text, opts);
    EXPECT_EQ(tok_->decode(ids, /*keep_control=*/true), text) << "case " << c["name"];
  }
}

TEST_F(TokenizerGolden, InvalidUtf8DecodesToReplacementCharacters) {
  // llama.cpp tokenizes each invalid byte as U+FFFD; decoding shows it.
  const auto ids = tok_->encode(std::string("a\x80z"));
  EXPECT_EQ(tok_->decode(ids), "a\xEF\xBF\xBDz");
}

TEST_F(TokenizerGolden, CorpusMatchesLlamaCpp) {
  const std::string path = corpus_file();
  SPILLWAY_REQUIRE_FILE(path);
  const std::string text = read_file(path);
  const auto& g = golden_["corpus"];
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok_->encode(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ tokens ] corpus: %zu bytes -> %zu tokens in %.2f s (%.0f tokens/s, %.1f MB/s)\n",
              text.size(), ids.size(), s, ids.size() / s, text.size() / s / 1e6);

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
  EXPECT_EQ(tok_->decode(ids), text);
}

}  // namespace
}  // namespace spillway
