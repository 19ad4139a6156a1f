// Decoder-only transformers read from GGUF files, behind one interface. An architecture is
// one folder under src/model/ (configuration from metadata, weight binding, the attention
// kind of each layer, the forward pass) plus one line in src/model/registry.cpp; sessions,
// perplexity, generation and the tools see only Model and Forward.
//
// Thread safety: a loaded Model is immutable and may be shared by any number of threads
// and sessions: every const member function may be called concurrently, and the mapped
// weights and the tokenizer are only read (Tokenizer::encode/decode included). Loading
// several models at once on different threads is safe. A Forward (working buffers)
// belongs to one thread at a time. The model must outlive its sessions and forwards.
// Replacing or truncating the file on disk while it is mapped is outside this contract.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/gguf/gguf.h"
#include "spillway/kv/cache.h"
#include "spillway/kv/kv_storage.h"
#include "spillway/ops/matmul.h"
#include "spillway/tokenizer/tokenizer.h"

namespace spillway::model {

class AttentionObserver;

// Hyperparameters every architecture has, named as GGUF names them (without the
// architecture prefix).
struct ModelConfig {
  std::string architecture;  // general.architecture ("llama", "gemma3")
  std::string name;          // general.name, if any
  int64_t n_layer = 0;       // block_count
  int64_t n_embd = 0;        // embedding_length
  int64_t n_head = 0;        // attention.head_count
  int64_t n_head_kv = 0;     // attention.head_count_kv
  int64_t head_dim = 0;      // attention.key_length, or embedding_length / head_count
  int64_t n_ff = 0;          // feed_forward_length
  int64_t n_vocab = 0;       // vocab_size, or the tokenizer's token count
  int64_t n_ctx_train = 0;   // context_length
  float rms_eps = 1e-5f;     // attention.layer_norm_rms_epsilon
  bool tied_output = false;  // no output.weight: token_embd is the output matrix
  // [n_layer]: window 0 for a global layer, else the native sliding window it attends in.
  std::vector<kv::LayerAttention> layers;
  // A hash of what makes two files the same model (not cryptographic): the architecture, the
  // tensor table (names, types, shapes) and the bytes of the 1-D tensors (norm weights,
  // which a fine-tune changes). Data fitted to a model (virtual sinks) records it and
  // refuses a model whose fingerprint differs. Set by Model::load.
  uint64_t fingerprint = 0;

  // What a KV cache for this model looks like.
  kv::CacheShape cache_shape() const {
    return {n_head_kv, head_dim, layers, n_head, fingerprint, architecture};
  }
  // Layers with a native sliding window.
  int64_t n_local_layers() const;
};

// Which logits a forward call produces.
enum class Logits { kNone, kLast, kAll };

// One stream's part of a batched forward pass (Forward::run_batch).
struct SequenceStep {
  const TokenId* tokens = nullptr;        // plan->n_tokens() tokens
  const kv::StepPlan* plan = nullptr;     // the stream's plans for them
  kv::KvStorage* kv = nullptr;            // the stream's storage
  Logits logits = Logits::kLast;          // which logits of this stream
  AttentionObserver* observer = nullptr;  // this stream's observer, if any
};

// Working buffers and the forward pass of one architecture, for batches of up to
// max_batch() tokens; allocated once. Used by one thread at a time.
class Forward {
 public:
  virtual ~Forward() = default;

  // Runs tokens[0..plan.n_tokens()) through the model: writes each token's rotated key and
  // value at its plan slot in `kv` (layer l follows plan.layer(l)) and attends as the plan
  // says. Returns the logits ([1][n_vocab] for kLast, [count][n_vocab] for kAll; valid
  // until the next call), nullptr for kNone. Throws InvalidArgument for a plan that does
  // not fit the storage or the batch size, or a token id outside the vocabulary.
  virtual const float* run(const TokenId* tokens, const kv::StepPlan& plan, kv::KvStorage& kv,
                           Logits which) = 0;

  // Several streams in one forward pass (continuous batching): the matrix products see
  // every token of every step at once (the weights are read once for all), attention runs
  // per stream over its own plan and storage. Each token gets exactly the bits it gets in
  // a pass of its own. The steps' tokens together are at most max_batch(). Returns the
  // logit rows of every step in step order ([1] for kLast, [T] for kAll, none for kNone;
  // valid until the next call). Throws as run() does, naming the step.
  virtual const float* run_batch(std::span<const SequenceStep> steps) = 0;

  virtual int64_t max_batch() const = 0;

  // Sizes the attention scratch for spans of up to max_span tokens, so that run() does not
  // allocate while a growing cache (full) reaches that span.
  virtual void reserve_span(int64_t max_span) = 0;

  // Attaches an observer of attention and hidden states (nullptr detaches). Not owned;
  // it must outlive its attachment. With none attached a forward pass does no extra work.
  virtual void set_observer(AttentionObserver* observer) = 0;
};

// A loaded model: owns the mapped file, the bound weights and the tokenizer. Immutable
// after load; many sessions may share one model.
class Model {
 public:
  virtual ~Model();

  // Opens and validates a GGUF file, then binds it with the architecture its
  // general.architecture names. Throws IoError / FormatError naming the file and the
  // tensor or key at fault, UnsupportedError for an architecture that is not registered
  // (the message lists those that are).
  static std::unique_ptr<Model> load(const std::string& path);

  const ModelConfig& config() const { return config_; }
  const gguf::GgufFile& file() const { return *file_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // tokenizer.chat_template, when the file has one (a pretrained base model may not).
  std::optional<std::string> chat_template() const;

  // Bytes of weights one decoded token reads (all matrices, norms, one embedding row).
  virtual uint64_t weight_bytes_per_token() const = 0;
  // A bound weight matrix by its GGUF name ("blk.3.attn_q.weight", "token_embd.weight";
  // "output.weight" is the embedding when the output is tied), as the forward pass reads
  // it: possibly in the interleaved layout, so read its rows with ops::dequantize_weight_row.
  // nullptr when the architecture binds no such matrix.
  virtual const ops::WeightMatrix* find_matrix(std::string_view name) const = 0;
  // A bound 1-D F32 weight (a norm's, RoPE frequency factors) by its GGUF name; nullptr
  // when there is none.
  virtual const float* find_vector(std::string_view name) const = 0;
  // Working buffers for forward passes of up to max_batch tokens (max_batch >= 1).
  virtual std::unique_ptr<Forward> make_forward(ThreadPool& pool, int64_t max_batch) const = 0;

 protected:
  explicit Model(std::unique_ptr<gguf::GgufFile> file) : file_(std::move(file)) {}
  // Builds the tokenizer from the file's metadata and checks its size against
  // config_.n_vocab (FormatError). Subclasses call it once config_ is set.
  void load_tokenizer();

  std::unique_ptr<gguf::GgufFile> file_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

// One registered architecture.
struct Architecture {
  std::string name;  // the general.architecture value it binds
  std::function<std::unique_ptr<Model>(std::unique_ptr<gguf::GgufFile>)> bind;
};

// The registered architectures (src/model/registry.cpp: one line each).
const std::vector<Architecture>& architectures();

}  // namespace spillway::model
