// Continuous batching: one forward pass advances several sessions at once. The matrix
// products see the tokens of every session together, so the weights are read once per
// step for all of them; attention runs per session over its own cache and policy. Each
// session ends the step exactly as if it had been fed its tokens alone (bit for bit).
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "spillway/core/thread_pool.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"

namespace spillway {

class BatchDecoder {
 public:
  // max_tokens: the most tokens of one step, all sessions together. `pool` may be shared
  // with the sessions (they are not used while a step runs); nullptr makes one of
  // `threads` threads (0: all cores). The model must outlive the decoder.
  BatchDecoder(const model::Model& model, int64_t max_tokens, ThreadPool* pool = nullptr,
               int threads = 0);
  ~BatchDecoder();

  // One session's part of a step: its next tokens (at least one).
  struct Entry {
    Session* session = nullptr;
    std::span<const TokenId> tokens;
  };

  // Feeds every entry's tokens to its session in one forward pass; afterwards each
  // session's last_logits() holds the logits after its last token. InvalidArgument, before
  // any session changes, for: no entries, a session twice or of another model, an entry
  // without tokens or with more than its session takes in one step (its cache's
  // max_step()), more than max_tokens in all, or a policy that recomputes its window
  // (recompute:W replays the window for every token and cannot share a pass). Should a
  // policy throw from its own plan() (a custom policy's limit), the sessions before it in
  // `entries` have planned a step that never ran: reset() them.
  void step(std::span<const Entry> entries);

  int64_t max_tokens() const { return max_tokens_; }

 private:
  const model::Model& model_;
  int64_t max_tokens_;
  std::unique_ptr<ThreadPool> own_pool_;
  std::unique_ptr<model::Forward> forward_;
  std::vector<model::SequenceStep> steps_;
};

}  // namespace spillway
