// Hostile sizes: files that declare tensors, arrays, vocabularies, contexts and
// hyperparameters far larger than the file or than memory, and texts far larger than
// memory. Each must give a clean typed error (naming what was wrong) before anything of
// that size is allocated, or a run whose memory does not grow with the declared size.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <istream>
#include <limits>
#include <random>
#include <streambuf>
#include <string>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "spillway/kv/cache.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "spillway/tokenizer/tokenizer.h"
#include "util/gguf_writer.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using gguf::GgufFile;
using gguf::Value;
using test::GgufWriter;
using test::TinyModelSpec;

// Runs f and expects E with every substring in its message.
template <class E, class F>
void expect_error(F&& f, std::initializer_list<std::string> subs) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << *subs.begin();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& s : subs)
      EXPECT_NE(msg.find(s), std::string::npos) << "message: " << msg << "\nexpected: " << s;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

Value u64(uint64_t v) {
  return Value(Value::Storage(std::in_place_index<10>, v));
}
Value u32(uint32_t v) {
  return Value(Value::Storage(std::in_place_index<4>, v));
}

using test::small_spec;

std::string write_spec(const TinyModelSpec& s) {
  return test::write_tiny_model(test::temp_dir(), s);
}

TEST(HostileSizes, TensorLargerThanTheFile) {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  // 2^20 x 2^31 float32: 8 PiB of data declared in a file of a few hundred bytes.
  w.add_raw_tensor("token_embd.weight", 0, {uint64_t{1} << 20, uint64_t{1} << 31}, {});
  expect_error<FormatError>([&] { GgufFile::from_bytes(w.bytes(), "huge.gguf"); },
                            {"huge.gguf", "token_embd.weight", "extends past end of file"});
}

TEST(HostileSizes, TensorWhoseElementCountOverflows) {
  GgufWriter w;
  w.add_raw_tensor("t", 0, {uint64_t{1} << 32, uint64_t{1} << 32, uint64_t{1} << 32}, {});
  expect_error<FormatError>([&] { GgufFile::from_bytes(w.bytes(), "huge.gguf"); },
                            {"'t'", "overflow"});
}

TEST(HostileSizes, VocabularyOf2To31TokensDeclaredInASmallFile) {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  w.add_strings("tokenizer.ggml.tokens", {"a", "b", "c"});
  auto image = w.bytes();
  // The array's length field: 2^31 strings, each needing at least 8 bytes.
  GgufWriter::put_u64(image, w.layout().kvs[1].value_at + 4, uint64_t{1} << 31);
  expect_error<FormatError>([&] { GgufFile::from_bytes(image, "vocab.gguf"); },
                            {"array length 2147483648", "extends past end of file"});
}

TEST(HostileSizes, ArraysBeyondTheElementCapAreRejectedBeforeAllocating) {
  // A uint8 array of kMaxArrayItems + 1 elements is a legal 16 MiB file, but would take
  // ~40 bytes of memory per element: rejected before any element is read.
  const uint64_t n = gguf::kMaxArrayItems + 1;
  GgufWriter w;
  w.add("big", Value(gguf::Array{gguf::ValueType::UINT8, {}}));
  auto image = w.bytes();
  const uint64_t len_at = w.layout().kvs[0].value_at + 4;
  GgufWriter::put_u64(image, len_at, n);
  image.resize(image.size() + n, 7);
  expect_error<FormatError>([&] { GgufFile::from_bytes(image, "big.gguf"); },
                            {"array length 16777217", "16777216 elements in all"});
}

TEST(HostileSizes, VocabSizeOf2To31InTheMetadata) {
  TinyModelSpec s = small_spec();
  s.replace_kv = {{"llama.vocab_size", u32(uint32_t{1} << 31)}};
  const std::string path = write_spec(s);
  expect_error<FormatError>([&] { model::Model::load(path); },
                            {"vocabulary has 262 tokens but the model expects 2147483648"});
}

TEST(HostileSizes, ContextLengthOf2To40IsABoundedRun) {
  // context_length sizes nothing (a default and a warning threshold): the model loads and
  // streams with memory set by the policy alone.
  TinyModelSpec s = small_spec();
  s.replace_kv = {{"llama.context_length", u64(uint64_t{1} << 40)}};
  auto m = model::Model::load(write_spec(s));
  EXPECT_EQ(m->config().n_ctx_train, int64_t{1} << 40);
  for (const char* spec : {"sink:4+8", "full"}) {
    SessionOptions so;
    so.policy = kv::PolicySpec(spec);
    so.threads = 1;
    so.max_batch = 8;
    Session session(*m, so);
    session.feed(test::random_tokens(40, 3));
    ASSERT_NE(session.last_logits(), nullptr);
    // 40 tokens of 1 layer x 1 KV head x head_dim 16 x (K and V) x 4 bytes, plus the
    // chunk slack: a few KiB, whatever the declared context.
    EXPECT_LT(session.kv_bytes_peak(), uint64_t{64} << 10) << spec;
  }
}

TEST(HostileSizes, NegativeContextLength) {
  TinyModelSpec s = small_spec();
  s.replace_kv = {
      {"llama.context_length", Value(Value::Storage(std::in_place_index<11>, int64_t{-5}))}};
  const std::string path = write_spec(s);
  expect_error<FormatError>([&] { model::Model::load(path); }, {"context_length -5 < 0"});
}

TEST(HostileSizes, AbsurdHyperparameters) {
  struct Case {
    const char* key;
    Value value;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"llama.block_count", u32(uint32_t{1} << 31), "beyond what this library supports"},
      {"llama.block_count", u64(uint64_t{1} << 40), "llama.block_count"},
      {"llama.embedding_length", u32(0xffffffffu), "beyond what this library supports"},
      {"llama.embedding_length", u64(uint64_t{1} << 40), "llama.embedding_length"},
      {"llama.attention.head_count", u32(uint32_t{1} << 31), "beyond what this library supports"},
      {"llama.attention.head_count_kv", u32(0), "must all be >= 1"},
      {"llama.feed_forward_length", u32(uint32_t{1} << 30), "beyond what this library supports"},
      {"llama.attention.key_length", u32(uint32_t{1} << 20), "head dimension 1048576"},
      // Plausible numbers that the tensors contradict: a binding error, not a bad read.
      {"llama.block_count", u32(4000), "blk.1.attn_norm.weight"},
      {"llama.embedding_length", u32(4096), "token_embd.weight"},
      {"llama.feed_forward_length", u32(1 << 22), "ffn_gate.weight"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    TinyModelSpec s = small_spec();
    s.replace_kv = {{c.key, c.value}};
    const std::string path = write_spec(s);
    expect_error<FormatError>([&] { model::Model::load(path); }, {c.expect});
  }
}

// An istream over `total` bytes of generated text (a line repeated) that counts what was
// read from it and holds only one line in memory.
class GeneratedText : public std::streambuf {
 public:
  GeneratedText(std::string line, uint64_t total) : line_(std::move(line)), left_(total) {}
  uint64_t served() const { return served_; }

 protected:
  int_type underflow() override {
    if (left_ == 0) return traits_type::eof();
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left_, line_.size()));
    setg(line_.data(), line_.data(), line_.data() + n);
    left_ -= n;
    served_ += n;
    return traits_type::to_int_type(line_[0]);
  }

 private:
  std::string line_;
  uint64_t left_;
  uint64_t served_ = 0;
};

TEST(HostileSizes, EncodeStreamReadsOnlyWhatMaxTokensNeeds) {
  auto m = model::Model::load(write_spec(small_spec()));
  const Tokenizer& tok = m->tokenizer();
  const std::string line = "the other her, the mother; there\n";
  GeneratedText text(line, uint64_t{1} << 40);  // a 1 TiB text
  std::istream in(&text);
  const std::vector<TokenId> ids = encode_stream(tok, in, "generated", 2000);
  ASSERT_EQ(ids.size(), 2000u);
  EXPECT_LE(text.served(), uint64_t{256} << 10);  // a few 64 KiB blocks, not the text
  std::string prefix;
  while (prefix.size() < text.served()) prefix += line;
  const std::vector<TokenId> whole = tok.encode(prefix);
  ASSERT_GE(whole.size(), ids.size());
  EXPECT_TRUE(std::equal(ids.begin(), ids.end(), whole.begin()));
}

TEST(HostileSizes, StreamEncoderHoldsBackAtMostMaxPendingWithoutNewlines) {
  auto m = model::Model::load(write_spec(small_spec()));
  const Tokenizer& tok = m->tokenizer();
  StreamEncoder enc(tok, {}, 4096);
  std::vector<TokenId> ids;
  std::string all;
  for (int i = 0; i < 2000; ++i) {
    const std::string piece = "her other the mother ";
    enc.push(piece, ids);
    all += piece;
    ASSERT_LE(enc.pending_bytes(), 4096 + piece.size());
  }
  enc.finish(ids);
  // The fallback cuts before a space between letters: a BPE pre-token boundary.
  EXPECT_EQ(ids, tok.encode(all));
}

TEST(HostileSizes, StreamEncoderMatchesWholeTextEncodeAtAnyPieceSize) {
  auto m = model::Model::load(write_spec(small_spec()));
  const Tokenizer& tok = m->tokenizer();
  std::string text;
  std::mt19937 rng(5);
  const std::vector<std::string> words = {"the", "her",      " ",  "\n", "\n\n", "  ",  "X",
                                          ".",   "\xc3\xa9", "12", "'s", "\t",   "\r\n"};
  for (int i = 0; i < 4000; ++i) text += words[rng() % words.size()];
  const std::vector<TokenId> whole = tok.encode(text);
  for (size_t piece : {size_t{1}, size_t{7}, size_t{64}, size_t{1000}, text.size()}) {
    StreamEncoder enc(tok);
    std::vector<TokenId> ids;
    for (size_t at = 0; at < text.size(); at += piece)
      enc.push(std::string_view(text).substr(at, piece), ids);
    enc.finish(ids);
    EXPECT_EQ(ids, whole) << "pieces of " << piece;
  }
  StreamEncoder enc(tok);
  std::vector<TokenId> ids;
  enc.finish(ids);
  EXPECT_THROW(enc.push("x", ids), InvalidArgument);
}

}  // namespace
}  // namespace spillway

namespace spillway {
namespace {

TEST(HostileSizes, PolicyCountsAboveTheCapAreUsageErrors) {
  for (const char* spec :
       {"window:16777217", "tova:666666666", "sink:4+1073741823", "h2o:1+16777217"}) {
    SCOPED_TRACE(spec);
    EXPECT_THROW(kv::PolicySpec{spec}, InvalidArgument);
  }
  EXPECT_NO_THROW(kv::PolicySpec{"window:16777216"});
}

TEST(HostileSizes, KvCacheLargerThanMemoryIsAnErrorBeforeAllocating) {
  // 4096 layers x 64 KV heads x head dim 256: 512 MiB a slot, so 2^20 slots are 512 TiB.
  kv::CacheShape shape;
  shape.n_head_kv = 64;
  shape.head_dim = 256;
  shape.layers.assign(4096, kv::LayerAttention{});
  for (const char* spec : {"window:1048576", "sink:4+1048572", "tova:1048576", "full"}) {
    SCOPED_TRACE(spec);
    kv::PolicyLimits limits;
    limits.max_stream = std::string_view(spec) == "full" ? int64_t{1} << 20 : 0;
    expect_error<InvalidArgument>([&] { kv::Cache cache(kv::PolicySpec(spec), shape, limits); },
                                  {"KV cache of policy", "more than this machine's"});
  }
}

}  // namespace
}  // namespace spillway
