// The GGUF reader on the real default model: its true hyperparameters, tokenizer keys,
// tensor count, types and layout.
#include <gtest/gtest.h>

#include <map>

#include "spillway/gguf/gguf.h"
#include "util/paths.h"

namespace spillway {
namespace {

TEST(InspectModel, HyperparametersOfSmolLM2) {
  const auto path = test::default_model_path();
  SPILLWAY_REQUIRE_FILE(path);
  auto f = gguf::GgufFile::open(path);
  const auto& m = f->metadata();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(m.get<std::string>("general.architecture"), "llama");
  EXPECT_EQ(m.get<uint32_t>("llama.block_count"), 30u);
  EXPECT_EQ(m.get<uint32_t>("llama.embedding_length"), 576u);
  EXPECT_EQ(m.get<uint32_t>("llama.attention.head_count"), 9u);
  EXPECT_EQ(m.get<uint32_t>("llama.attention.head_count_kv"), 3u);
  EXPECT_EQ(m.get<uint32_t>("llama.feed_forward_length"), 1536u);
  EXPECT_EQ(m.get<uint32_t>("llama.context_length"), 8192u);
  EXPECT_EQ(m.get<float>("llama.rope.freq_base"), 100000.0f);
  EXPECT_EQ(m.get<uint32_t>("llama.rope.dimension_count"), 64u);
  EXPECT_FLOAT_EQ(m.get<float>("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(m.get<uint32_t>("llama.vocab_size"), 49152u);

  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.pre"), "smollm");
  const auto tokens = m.get_strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 49152u);
  EXPECT_EQ(tokens[m.get<uint32_t>("tokenizer.ggml.bos_token_id")], "<|im_start|>");
  EXPECT_EQ(tokens[m.get<uint32_t>("tokenizer.ggml.eos_token_id")], "<|im_end|>");
  EXPECT_EQ(m.get_ints("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(m.get_strings("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_FALSE(m.get<bool>("tokenizer.ggml.add_bos_token"));
}

TEST(InspectModel, TensorsOfSmolLM2) {
  const auto path = test::default_model_path();
  SPILLWAY_REQUIRE_FILE(path);
  auto f = gguf::GgufFile::open(path);
  ASSERT_EQ(f->tensors().size(), 272u);
  std::map<DType, int> by_type;
  uint64_t end = 0;
  for (const auto& t : f->tensors()) {
    by_type[t.type]++;
    EXPECT_EQ(t.offset % f->alignment(), 0u) << t.name;
    end = std::max(end, f->data_offset() + t.offset + t.n_bytes);
  }
  EXPECT_EQ(by_type,
            (std::map<DType, int>{{DType::Q4_1, 210}, {DType::F32, 61}, {DType::Q8_0, 1}}));
  EXPECT_LE(end, f->file_size());

  const auto& embd = f->tensor("token_embd.weight");
  EXPECT_EQ(embd.type, DType::Q8_0);
  EXPECT_EQ(embd.n_dims, 2);
  EXPECT_EQ(embd.ne[0], 576);
  EXPECT_EQ(embd.ne[1], 49152);
  EXPECT_EQ(embd.n_bytes, 49152u * 18u * 34u);
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);  // tied to token_embd

  const auto& k = f->tensor("blk.29.attn_k.weight");
  EXPECT_EQ(k.type, DType::Q4_1);
  EXPECT_EQ(k.ne[0], 576);
  EXPECT_EQ(k.ne[1], 192);  // 3 kv heads x 64
  EXPECT_EQ(f->tensor("blk.0.ffn_down.weight").ne[0], 1536);
  EXPECT_EQ(f->tensor("output_norm.weight").type, DType::F32);
  EXPECT_EQ(f->data_offset(), 1785664u);  // as the gguf Python package reports it
}

}  // namespace
}  // namespace spillway
