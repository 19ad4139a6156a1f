// What a session's cache holds right now, token by token, and where its last token's
// attention went: the data of a live cache view (`spillway serve`'s
// /v1/conversations/{id}/cache, docs/serve.md).
//
// cache_layout() reads the plan of the last step (kv::Cache::step()): the slots the last
// token's query attended to in the global layers (group 0; for policies with a cache per
// layer, the first such layer's) are the tokens the cache still holds for it. Each token
// of the stream is then
//   sink     in a sink range of that plan (kv::SlotRange::sink): kept for the sink role
//   window   attended, and in the unbroken run of the newest stream indices that ends at
//            the last token
//   kept     attended, outside that run (a scattered policy kept it from farther back:
//            H2O's heavy hitters, TOVA's survivors, detected sinks)
//   evicted  not attended any more
// Slots of the batch ring that hold a stale token nobody attends to count as evicted.
//
// LastTokenAttention is an observer (model/observer.h) that records, for the last token
// of every forward step, each layer and query head's probability on the sink ranges, on
// the first stream indices and on the newest ones. It asks for probabilities in every
// layer: attach it only while someone looks (a step costs one more pass over the keys).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "spillway/kv/cache.h"
#include "spillway/model/model.h"
#include "spillway/model/observer.h"

namespace spillway::analysis {

enum class TokenState : uint8_t { kSink, kWindow, kKept, kEvicted };
// "sink", "window", "kept", "evicted".
const char* token_state_name(TokenState s);

struct CachedToken {
  int64_t index = 0;  // stream index
  TokenState state = TokenState::kEvicted;
  int32_t slot = -1;       // cache slot of the global layers (-1: evicted)
  int64_t key_pos = -1;    // RoPE position its key was rotated at (-1: evicted)
  int64_t query_pos = -1;  // position of the query the last token scored it with: the
                           // score sees the distance query_pos - key_pos (-1: evicted)
};

struct CacheLayout {
  int64_t n_past = 0;  // tokens in the stream
  // Counts over the whole stream.
  int64_t n_sink = 0, n_window = 0, n_kept = 0, n_evicted = 0;
  // Every token the last query attended to, and every token from `first_listed` on, in
  // stream order.
  std::vector<CachedToken> tokens;
  int64_t first_listed = 0;
};

// The layout after the last step of a session whose stream has n_past tokens (for
// policies that replay their window, the plan's indices are relative to the replay and
// are shifted to the stream's). Tokens before first_listed that are evicted are counted,
// not listed (a long conversation's view stays small). An empty layout when nothing was
// planned yet. Throws InvalidArgument for n_past smaller than the plan's last token.
CacheLayout cache_layout(const kv::Cache& cache, int64_t n_past, int64_t first_listed = 0);

// Where one token's query heads put their probability, per layer.
struct AttentionShares {
  int64_t stream_index = -1;  // the recorded token as its plan numbers it (a replaying
                              // policy's from the replay's start); -1: none recorded yet
  int64_t n_layer = 0, n_head = 0;
  int64_t first = 0, recent = 0;  // the sizes of the two stream-index groups below
  // [n_layer][n_head], row-major: probability on the plan's sink ranges; on stream
  // indices 0..first-1 wherever they sit (0 where the cache evicted them); on the `recent`
  // newest stream indices (the token itself included). For policies that replay their
  // window the indices are the replay's (its first tokens are what it sinks on). The
  // probabilities leave out virtual sinks (nullsink), as the model's records do.
  std::vector<float> sink, first_tokens, newest;
  // [n_layer]: tokens the layer's query attended to.
  std::vector<int64_t> span;
};

class LastTokenAttention final : public model::AttentionObserver {
 public:
  // first, recent >= 1 (InvalidArgument otherwise).
  LastTokenAttention(const model::ModelConfig& config, int64_t first = 4, int64_t recent = 32);

  // The last step's record (copied).
  const AttentionShares& shares() const { return shares_; }

  void on_attach(const kv::Cache& cache) override;
  void on_step(const kv::StepPlan& plan) override;
  bool wants_probs(int64_t layer) override { return true; }
  void on_attention(const model::AttentionRecord& record) override;

 private:
  const kv::Cache* cache_ = nullptr;
  AttentionShares shares_;
  AttentionShares pending_;                        // filled layer by layer during a step
  std::vector<std::vector<int64_t>> slot_stream_;  // [group][slot] stream index, this step
  std::vector<int32_t> group_of_layer_;
};

}  // namespace spillway::analysis
