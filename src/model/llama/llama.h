// Llama-family decoders (SmolLM2, TinyLlama, Llama 2/3 style GGUF files): pre-norm blocks
// of RMSNorm, grouped-query attention with RoPE (adjacent pairs, the GGUF llama
// convention) and a SwiGLU feed-forward network. Private to the library; tests use it for
// white-box references.
#pragma once

#include <memory>
#include <vector>

#include "../transformer.h"

namespace spillway::model::llama {

// What Llama adds to ModelConfig.
struct LlamaConfig {
  int64_t n_rot = 0;  // rope.dimension_count (default head_dim)
  double rope_freq_base = 10000.0;
  double rope_freq_scale = 1.0;  // 1 / rope.scaling.factor for linear scaling

  // Reads and checks the llama keys. Throws UnsupportedError for a RoPE scaling type
  // other than none/linear, FormatError for inconsistent keys.
  static LlamaConfig from_gguf(const gguf::GgufFile& file, const ModelConfig& common);
};

struct LlamaLayer {
  const float* attn_norm = nullptr;  // [n_embd]
  ops::WeightMatrix wq;              // [n_head*hd x n_embd]
  ops::WeightMatrix wk, wv;          // [n_head_kv*hd x n_embd]
  ops::WeightMatrix wo;              // [n_embd x n_head*hd]
  const float* ffn_norm = nullptr;   // [n_embd]
  ops::WeightMatrix w_gate, w_up;    // [n_ff x n_embd]
  ops::WeightMatrix w_down;          // [n_embd x n_ff]
};

class LlamaModel final : public detail::BlockModel<LlamaLayer> {
 public:
  // Binds the file's weights (shapes checked against the metadata).
  explicit LlamaModel(std::unique_ptr<gguf::GgufFile> file);

  const LlamaConfig& llama_config() const { return llama_; }
  const detail::RopeTable& rope() const { return rope_; }

  // The block tensors, and rope_freqs.weight when the file has it.
  const float* find_vector(std::string_view name) const override;
  std::unique_ptr<Forward> make_forward(ThreadPool& pool, int64_t max_batch) const override;

 private:
  LlamaConfig llama_;
  const float* rope_factors_ = nullptr;  // [n_rot / 2] rope_freqs.weight, if any
  detail::RopeTable rope_;
};

std::unique_ptr<Model> bind(std::unique_ptr<gguf::GgufFile> file);

}  // namespace spillway::model::llama
