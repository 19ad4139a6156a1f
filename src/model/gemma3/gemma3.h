// Gemma 3 decoders (gemma3 GGUF files, e.g. Gemma 3 270M): the embedding scaled by
// sqrt(n_embd); per layer RMSNorm before and after both attention and feed-forward
// (post-attention / post-FFN norms on the block outputs), per-head RMSNorm of queries and
// keys (QK-norm) before RoPE in GPT-NeoX style (rotating halves), a GELU-gated (tanh form)
// feed-forward network, and grouped-query attention that is local in 5 of every 6 layers
// (a sliding window of attention.sliding_window tokens with its own RoPE base,
// rope.freq_base_swa, 10,000 by default) and global in every 6th. Private to the library;
// tests use it for white-box references.
#pragma once

#include <memory>
#include <vector>

#include "../transformer.h"

namespace spillway::model::gemma3 {

// What Gemma 3 adds to ModelConfig.
struct Gemma3Config {
  int64_t n_rot = 0;                      // rope.dimension_count (default head_dim)
  double rope_freq_base = 1000000.0;      // global layers: rope.freq_base
  double rope_freq_scale = 1.0;           // global layers: 1 / rope.scaling.factor (linear)
  double rope_freq_base_local = 10000.0;  // local layers: rope.freq_base_swa
  int64_t sliding_window = 0;             // attention.sliding_window (0: every layer global)
  float attn_scale = 0.0f;                // multiplies q.k (1/sqrt(query_pre_attn_scalar))
  float embd_scale = 1.0f;                // multiplies the embedding rows: sqrt(n_embd)
  float final_logit_softcap = 0.0f;       // final_logit_softcapping (0: none)

  // Reads and checks the gemma3 keys and fills common.layers with the local/global
  // pattern: attention.sliding_window_pattern (an array of per-layer flags, or a period
  // p: layer i is local unless i % p == p - 1), else the period 6 the architecture
  // defines. Throws FormatError / UnsupportedError naming the key.
  static Gemma3Config from_gguf(const gguf::GgufFile& file, ModelConfig& common);
};

struct Gemma3Layer {
  const float* attn_norm = nullptr;       // [n_embd]
  ops::WeightMatrix wq;                   // [n_head*hd x n_embd]
  ops::WeightMatrix wk, wv;               // [n_head_kv*hd x n_embd]
  const float* q_norm = nullptr;          // [hd]
  const float* k_norm = nullptr;          // [hd]
  ops::WeightMatrix wo;                   // [n_embd x n_head*hd]
  const float* post_attn_norm = nullptr;  // [n_embd]
  const float* ffn_norm = nullptr;        // [n_embd]
  ops::WeightMatrix w_gate, w_up;         // [n_ff x n_embd]
  ops::WeightMatrix w_down;               // [n_embd x n_ff]
  const float* post_ffn_norm = nullptr;   // [n_embd]
};

class Gemma3Model final : public detail::BlockModel<Gemma3Layer> {
 public:
  explicit Gemma3Model(std::unique_ptr<gguf::GgufFile> file);

  const Gemma3Config& gemma_config() const { return gemma_; }
  // RoPE of layer i (local layers and global layers differ).
  const detail::RopeTable& rope(int64_t i) const {
    return config_.layers[static_cast<size_t>(i)].window > 0 ? rope_local_ : rope_global_;
  }

  std::unique_ptr<Forward> make_forward(ThreadPool& pool, int64_t max_batch) const override;

 private:
  Gemma3Config gemma_;
  detail::RopeTable rope_local_, rope_global_;
};

std::unique_ptr<Model> bind(std::unique_ptr<gguf::GgufFile> file);

}  // namespace spillway::model::gemma3
