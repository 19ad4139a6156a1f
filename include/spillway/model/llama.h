// Llama-family decoder-only transformers (SmolLM2, TinyLlama, Llama 2/3 style GGUF files):
// configuration from metadata, weights bound in place in the mapped file, and the forward
// pass over a batch of tokens following a KV-cache policy's plan.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/gguf/gguf.h"
#include "spillway/kv/kv_storage.h"
#include "spillway/kv/policy.h"
#include "spillway/ops/attention.h"
#include "spillway/ops/matmul.h"
#include "spillway/tokenizer/tokenizer.h"

namespace spillway::model {

// Hyperparameters, named as GGUF names them (without the architecture prefix).
struct LlamaConfig {
  std::string architecture;  // general.architecture ("llama")
  std::string name;          // general.name, if any
  int64_t n_layer = 0;       // block_count
  int64_t n_embd = 0;        // embedding_length
  int64_t n_head = 0;        // attention.head_count
  int64_t n_head_kv = 0;     // attention.head_count_kv
  int64_t head_dim = 0;      // n_embd / n_head (or attention.key_length)
  int64_t n_ff = 0;          // feed_forward_length
  int64_t n_vocab = 0;       // vocab_size, or the tokenizer's token count
  int64_t n_ctx_train = 0;   // context_length
  int64_t n_rot = 0;         // rope.dimension_count (default head_dim)
  double rope_freq_base = 10000.0;
  double rope_freq_scale = 1.0;  // 1 / rope.scaling.factor for linear scaling
  float rms_eps = 1e-5f;         // attention.layer_norm_rms_epsilon
  bool tied_output = false;      // no output.weight: token_embd is the output matrix

  // Reads and checks the metadata. Throws UnsupportedError for another architecture or
  // RoPE scaling type, FormatError for missing or inconsistent keys.
  static LlamaConfig from_gguf(const gguf::GgufFile& file);
};

struct LlamaLayer {
  const float* attn_norm = nullptr;  // [n_embd]
  ops::WeightMatrix wq, wk, wv,
      wo;  // [n_head*hd x n_embd], [n_head_kv*hd x n_embd] x2, [n_embd x n_embd]
  const float* ffn_norm = nullptr;  // [n_embd]
  ops::WeightMatrix w_gate, w_up;   // [n_ff x n_embd]
  ops::WeightMatrix w_down;         // [n_embd x n_ff]
};

// A loaded model: owns the mapped file, the bound weights and the tokenizer. Immutable
// after load; many sessions may share one model.
class LlamaModel {
 public:
  // Opens, validates and binds. Throws IoError / FormatError / UnsupportedError naming the
  // file and the tensor or key at fault (shape checked against the metadata).
  static std::unique_ptr<LlamaModel> load(const std::string& path);
  explicit LlamaModel(std::unique_ptr<gguf::GgufFile> file);

  const LlamaConfig& config() const { return config_; }
  const gguf::GgufFile& file() const { return *file_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const LlamaLayer& layer(int64_t i) const { return layers_[static_cast<size_t>(i)]; }
  const ops::WeightMatrix& token_embd() const { return token_embd_; }
  const ops::WeightMatrix& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  // inv_freq[i] = freq_scale * base^(-2i/n_rot) (divided by rope_freqs[i] when present).
  const std::vector<double>& rope_inv_freq() const { return inv_freq_; }
  // Bytes of weights one decoded token reads (all matrices + norms + one embedding row).
  uint64_t weight_bytes_per_token() const;

 private:
  std::unique_ptr<gguf::GgufFile> file_;
  LlamaConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<LlamaLayer> layers_;
  ops::WeightMatrix token_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<double> inv_freq_;
};

// Which logits a forward call produces.
enum class Logits { kNone, kLast, kAll };

// Working buffers for forward passes of up to max_batch tokens; allocated once.
// Not thread-safe: one Forward per concurrent stream.
class Forward {
 public:
  Forward(const LlamaModel& model, ThreadPool& pool, int64_t max_batch);

  // Runs tokens[0..plan.tokens.size()) through the model: writes each token's rotated key
  // and value at its plan slot in `kv` and attends as the plan says. Returns the logits
  // ([1][n_vocab] for kLast, [count][n_vocab] for kAll; valid until the next call).
  // kv must hold at least the slots the plan uses.
  const float* run(const TokenId* tokens, const kv::BatchPlan& plan, kv::KvStorage& kv,
                   Logits which);

  int64_t max_batch() const { return max_batch_; }

  // Sizes the attention scratch for spans of up to max_span tokens, so that run() does
  // not allocate while a growing cache (full) reaches that span.
  void reserve_span(int64_t max_span);

  // Optional: record attention weights of layer `layer` for the last token of each
  // run() (probabilities in plan-range order, per head). Off when layer < 0.
  void record_attention(int64_t layer) { record_layer_ = layer; }
  // [n_head][span] of the last run's last token (empty when not recording).
  const std::vector<float>& recorded_attention() const { return recorded_; }

 private:
  const LlamaModel& model_;
  ThreadPool& pool_;
  int64_t max_batch_;
  int64_t record_layer_ = -1;
  std::vector<float> recorded_;
  ops::Activations act_;
  std::vector<float> x_;       // [max_batch][n_embd] residual stream
  std::vector<float> xn_;      // [max_batch][n_embd] normed
  std::vector<float> q_;       // [max_batch][n_head*hd] unrotated queries
  std::vector<float> qr_;      // [max_batch][2][n_head*hd] queries rotated per query position
  std::vector<float> k_;       // [max_batch][n_head_kv*hd]
  std::vector<float> v_;       // [max_batch][n_head_kv*hd]
  std::vector<float> attn_;    // [max_batch][n_head*hd]
  std::vector<float> gate_;    // [max_batch][n_ff]
  std::vector<float> up_;      // [max_batch][n_ff]
  std::vector<float> logits_;  // [rows][n_vocab], grown to the most rows asked for
  // Attention partials, [items][ops::attention_part_floats]: per piece while one token's
  // pieces are spread over threads, per thread otherwise.
  std::vector<float> attn_parts_;
  std::vector<int8_t> q_index_;        // per plan range: which rotated query (0 or 1)
  std::vector<ops::KeyRun> key_runs_;  // per plan range: its slots and rotated query
  std::vector<int64_t> first_item_;    // [max_batch + 1] first piece item of each token
};

}  // namespace spillway::model
