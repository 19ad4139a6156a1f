// A Session is one token stream through a model under a KV-cache policy: it owns the
// cache (policies + storage) and the forward buffers, and turns fed tokens into logits.
//
// Thread safety: a Session belongs to one thread at a time (calls on one session must not
// overlap; handing it to another thread between calls is fine). Any number of sessions,
// each on its own thread, may use one Model at once, and their results are bit-identical
// to running them one after another (tests/unit/thread_safety_test.cpp). A ThreadPool
// given to several sessions may be used by them from different threads at once
// (core/thread_pool.h: a caller that finds it busy runs its job alone); for streams that
// should each run in parallel, give each session its own pool (pool == nullptr).
// Observers and policy factories passed in are called on the session's thread and on its
// pool's workers.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/kv/cache.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"

namespace spillway {

struct SessionOptions {
  kv::PolicySpec policy;   // parsed policy spec (kv/policy.h), "full" by default
  int64_t max_batch = 64;  // tokens per forward pass when feeding many at once
  int64_t max_stream = 0;  // expected stream length (pre-sizes a growing cache), 0: unknown
  int threads = 0;         // threads of the session's own pool (0: all cores)
  // A policy of the caller's instead of the spec's kind (kv::Cache::PolicyFactory); the
  // spec still gives kv= and local=. Policies must follow the contract of kv/policy.h.
  kv::Cache::PolicyFactory policy_factory;
};

class Session {
 public:
  // Throws InvalidArgument for limits the policy rejects. The model must outlive the
  // session. `pool` may be shared between sessions (also on different threads; see above)
  // and must outlive them; nullptr makes one of opts.threads threads.
  Session(const model::Model& model, const SessionOptions& opts, ThreadPool* pool = nullptr);
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
  const kv::Cache& cache() const { return *cache_; }
  // The spec's policy (the global layers' one).
  const kv::Policy& policy() const { return cache_->policy(); }
  const kv::KvStorage& storage() const { return cache_->storage(); }
  const model::Model& model() const { return model_; }
  uint64_t kv_bytes_peak() const { return cache_->bytes_peak(); }
  // Forgets the stream: the next token is stream index 0.
  void reset();
  // Stream index n (>= n_past()) begins a chat turn: policies that evict whole turns plan
  // by it (kv::Policy::mark_turn_start; InvalidArgument for a mark behind the stream).
  void mark_turn_start(int64_t n) { cache_->mark_turn_start(n); }

  // Attaches an observer to every forward pass of this session (nullptr detaches); not
  // owned (model/observer.h).
  void set_observer(model::AttentionObserver* observer);

  // A copy of the stream's state (cache contents, policies, position, last logits), to go
  // back to later with restore(): e.g. to run several variants of the same continuation.
  // Costs a copy of the KV storage.
  struct Checkpoint;
  std::shared_ptr<const Checkpoint> checkpoint() const;
  // Returns to a checkpoint of this session (InvalidArgument for another session's).
  void restore(const Checkpoint& cp);

  // The stream's state as bytes, to continue it in another process or after a restart: the
  // position, the last logits, the policies' state (slots, scores, chosen sinks, turn
  // marks), the KV storage and, for replaying policies, the tokens to replay. Loaded into a
  // session made with the same model, policy spec and max_batch, the stream goes on as if
  // it had never stopped: the same logits, bit for bit (tests/unit/session_state_test.cpp).
  // The last step's plan and the observer are not part of it. Costs the KV storage's
  // bytes (sink:4+1020 on SmolLM2-135M: 47 MB at f32).
  std::string save_state() const;
  // Reads a state save_state() wrote. Throws FormatError naming `what`, the byte offset and
  // the field for data that is truncated, damaged (a checksum covers it all), of another
  // model, policy or max_batch, or that does not fit; the session is then reset.
  void load_state(std::string_view data, const std::string& what = "session state");
  // The same through a file, written whole or not at all (core/file.h); load() throws
  // IoError for a file that cannot be read.
  void save(const std::string& path) const;
  void load(const std::string& path);

  // Moves the stream to stream index n >= n_past() without computing the tokens in between,
  // for policies whose plans depend on the stream index alone (sink:S+W, window:W, and the
  // native windows of local layers; InvalidArgument otherwise). The slots keep whatever
  // K/V they held, so what follows is not what the model would have produced after n real
  // tokens: this is for measuring the cost of decoding at a great depth (`spillway bench
  // --at`) without decoding what comes before.
  void seek(int64_t n);

 private:
  friend class BatchDecoder;  // session/batch.h: plans, then commits, a shared pass
  // One forward pass; stop == nullptr asks for no logits at all (advance).
  void feed_batch(const TokenId* tokens, int64_t count, const LogitsFn& on_logits, bool* stop);
  void feed_replay(TokenId token, const LogitsFn& on_logits, bool* stop);
  // Logs, once per stream, a warning when the stream reaches past_context_at_ (core/log.h).
  void note_stream_end(int64_t end);
  // load_state() without the reset on an error.
  void read_state(std::string_view data, const std::string& what);

  // What the forward pass reports goes to the attached observer and, for policies that
  // decide from attention, to the cache.
  class Observers;
  model::AttentionObserver* observer_for_step();

  const model::Model& model_;
  std::unique_ptr<Observers> observers_;
  std::unique_ptr<ThreadPool> own_pool_;
  ThreadPool* pool_;
  std::unique_ptr<kv::Cache> cache_;
  std::unique_ptr<model::Forward> forward_;
  std::vector<float> last_logits_;  // [n_vocab]
  bool has_logits_ = false;
  int64_t n_past_ = 0;
  std::deque<TokenId> history_;         // last W tokens, for replaying policies
  std::vector<TokenId> replay_tokens_;  // [W] contiguous copy of history_ for a replay
  int64_t max_batch_;
  int64_t past_context_at_ = -1;  // stream index past the trained context; -1: never
  bool warned_past_context_ = false;
};

}  // namespace spillway
