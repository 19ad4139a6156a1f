// A Session is one token stream through a model under a KV-cache policy: it owns the
// policy, the KV storage and the forward buffers, and turns fed tokens into logits.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "spillway/core/thread_pool.h"
#include "spillway/kv/kv_storage.h"
#include "spillway/kv/policy.h"
#include "spillway/model/llama.h"

namespace spillway {

struct SessionOptions {
  std::string policy = "full";  // policy spec (kv/policy.h)
  int64_t max_batch = 64;       // tokens per forward pass when feeding many at once
  int64_t max_stream = 0;       // expected stream length (pre-sizes a growing cache), 0: unknown
  int threads = 0;              // threads of the session's own pool (0: all cores)
};

class Session {
 public:
  // Throws InvalidArgument for a bad policy spec. The model must outlive the session.
  // `pool` may be shared between sessions used one at a time; nullptr makes one.
  Session(const model::LlamaModel& model, const SessionOptions& opts, ThreadPool* pool = nullptr);
  ~Session();

  // Called with (stream index of the token, its logits [n_vocab]); the logits predict the
  // next token. Return false to stop early.
  using LogitsFn = std::function<bool(int64_t stream_index, const float* logits)>;

  // Feeds tokens in order. With on_logits, every token's logits are passed to it (the
  // policy's semantics hold per token even inside a batch); without it only the last
  // token's logits are kept (last_logits()). Returns the number of tokens consumed.
  int64_t feed(std::span<const TokenId> tokens, const LogitsFn& on_logits = {});

  // Feeds tokens whose logits nobody needs (the K/V still go into the cache; replaying
  // policies only remember them). last_logits() is not updated.
  void advance(std::span<const TokenId> tokens);

  // Logits after the last fed token ([n_vocab]); nullptr before the first.
  const float* last_logits() const { return has_logits_ ? last_logits_.data() : nullptr; }

  int64_t n_past() const { return n_past_; }
  const kv::Policy& policy() const { return *policy_; }
  const kv::KvStorage& storage() const { return *kv_; }
  model::Forward& forward() { return *forward_; }
  const model::LlamaModel& model() const { return model_; }
  uint64_t kv_bytes_peak() const { return kv_bytes_peak_; }
  // Forgets the stream: the next token is stream index 0.
  void reset();

 private:
  // One forward pass; stop == nullptr asks for no logits at all (advance).
  void feed_batch(const TokenId* tokens, int64_t count, const LogitsFn& on_logits, bool* stop);
  void feed_replay(TokenId token, const LogitsFn& on_logits, bool* stop);

  const model::LlamaModel& model_;
  std::unique_ptr<ThreadPool> own_pool_;
  ThreadPool* pool_;
  std::unique_ptr<kv::Policy> policy_;
  std::unique_ptr<kv::KvStorage> kv_;
  std::unique_ptr<model::Forward> forward_;
  kv::BatchPlan plan_;
  std::vector<float> last_logits_;  // [n_vocab]
  bool has_logits_ = false;
  int64_t n_past_ = 0;
  uint64_t kv_bytes_peak_ = 0;
  std::deque<TokenId> history_;         // last W tokens, for replaying policies
  std::vector<TokenId> replay_tokens_;  // [W] contiguous copy of history_ for a replay
  int64_t max_batch_;
};

}  // namespace spillway
