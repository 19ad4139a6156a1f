// StreamEncoder on the real tokenizers and the corpus: the ids of the text pushed in 64 KiB
// blocks (cut wherever the blocks end) equal encode() of the whole text, for the BPE
// tokenizer of the default model and the SentencePiece tokenizer of Gemma 3; and the
// SentencePiece vocabulary has no piece that a newline cut could split.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"
#include "util/paths.h"

namespace spillway {
namespace {

std::string corpus() {
  std::ifstream f(test::corpus_path(), std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void check_corpus(const std::string& model_path) {
  SPILLWAY_REQUIRE_FILE(model_path);
  SPILLWAY_REQUIRE_FILE(test::corpus_path());
  auto file = gguf::GgufFile::open(model_path);
  auto tok = Tokenizer::from_gguf(*file);
  const std::string text = corpus();
  const std::vector<TokenId> whole = tok->encode(text);
  std::istringstream in(text);
  const std::vector<TokenId> streamed = encode_stream(*tok, in, "austen.txt");
  ASSERT_EQ(streamed.size(), whole.size());
  EXPECT_TRUE(streamed == whole);
  // With a limit: the same first ids.
  std::istringstream in2(text);
  const std::vector<TokenId> head = encode_stream(*tok, in2, "austen.txt", 100000);
  ASSERT_EQ(head.size(), 100000u);
  EXPECT_TRUE(std::equal(head.begin(), head.end(), whole.begin()));
  // Odd piece sizes too (cuts land anywhere in a line, in a UTF-8 sequence, ...).
  StreamEncoder enc(*tok);
  std::vector<TokenId> ids;
  for (size_t at = 0, k = 0; at < text.size(); ++k) {
    const size_t n = 1 + (k * 7919) % 20000;
    enc.push(std::string_view(text).substr(at, n), ids);
    at += n;
  }
  enc.finish(ids);
  EXPECT_TRUE(ids == whole);
}

TEST(StreamEncodeModel, BpeCorpusEqualsWholeText) {
  check_corpus(test::default_model_path());
}

TEST(StreamEncodeModel, SentencePieceCorpusEqualsWholeText) {
  check_corpus(test::gemma3_model_path());
}

TEST(StreamEncodeModel, NoSentencePiecePieceHoldsANewlineBeforeAnotherCharacter) {
  SPILLWAY_REQUIRE_FILE(test::gemma3_model_path());
  auto file = gguf::GgufFile::open(test::gemma3_model_path());
  const auto pieces = file->metadata().get_strings("tokenizer.ggml.tokens");
  for (const std::string& p : pieces) {
    const size_t nl = p.find('\n');
    if (nl == std::string::npos) continue;
    EXPECT_EQ(p.find_first_not_of('\n', nl), std::string::npos) << "piece '" << p << "'";
  }
}

}  // namespace
}  // namespace spillway
