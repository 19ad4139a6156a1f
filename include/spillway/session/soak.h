// A soak: one or more streams decoded a token at a time through a bounded KV-cache policy,
// for as long as asked, the decode path of a long-running service, with what would show a
// leak or a slowdown recorded at every checkpoint (analysis::SoakCheckpoint): tokens/s,
// wall time and CPU time per step, resident memory and its anonymous part, KV bytes,
// non-finite logits, and the NLL of the next token. analysis::judge_soak judges the
// checkpoints; `spillway soak` prints them and keeps them across processes.
//
// The streams read one corpus of token ids repeated back to back (every repetition begins
// as the first did); stream i starts i/streams of the way in. One stream is fed through its
// Session, several go through one BatchDecoder step each (the path of `spillway serve`), one
// token each per step. A soak stopped at a checkpoint and resumed (progress() and
// save_states() kept, then resume()) goes on as one stream: the same tokens, the same
// logits, so every interval's NLL equals that of a run that never stopped.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/analysis/soak.h"
#include "spillway/core/thread_pool.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/session/batch.h"
#include "spillway/session/session.h"

namespace spillway {

struct SoakOptions {
  kv::PolicySpec policy{"sink:4+1020"};  // must bound the cache
  int64_t streams = 1;                   // 1..256
  int64_t every = 10'000;                // tokens (per stream) per checkpoint
};

// Where a soak stands: what a saved soak carries besides the sessions' states.
struct SoakProgress {
  int64_t tokens = 0;     // per stream
  double seconds = 0.0;   // stream time, every process so far
  int64_t nonfinite = 0;  // non-finite logits so far
  double nll_sum = 0.0;   // of every prediction scored so far
  int64_t nll_count = 0;
  std::vector<analysis::SoakCheckpoint> checkpoints;
};

class SoakRun {
 public:
  // `corpus` holds at least 2 tokens. Throws InvalidArgument, before any session exists,
  // for a policy whose cache grows, streams outside 1..256, every < 1 or a shorter corpus.
  // The model and the pool must outlive the soak.
  SoakRun(const model::Model& model, std::vector<TokenId> corpus, const SoakOptions& options,
          ThreadPool* pool);
  ~SoakRun();
  SoakRun(const SoakRun&) = delete;
  SoakRun& operator=(const SoakRun&) = delete;

  // Goes on from a saved soak, as a new segment: its progress and each stream's session
  // state (Session::save_state), in stream order. Throws FormatError naming `what` for
  // states that do not fit (their count, a session at another position than the progress).
  // Only before the first run_interval().
  void resume(SoakProgress progress, std::span<const std::string_view> states,
              const std::string& what);

  // Decodes until the next checkpoint (a multiple of `every` tokens per stream) or `end`,
  // whichever comes first, and returns that checkpoint (also the last of
  // progress().checkpoints). `end` must lie past progress().tokens.
  const analysis::SoakCheckpoint& run_interval(int64_t end);

  const SoakProgress& progress() const { return progress_; }
  int64_t segment() const { return segment_; }  // 0, then 1 for each resume
  // Each stream's session state, in stream order, for resume().
  std::vector<std::string> save_states() const;

  int64_t streams() const { return static_cast<int64_t>(sessions_.size()); }
  int64_t corpus_tokens() const { return static_cast<int64_t>(corpus_.size()); }
  const Session& session(int64_t i) const { return *sessions_[static_cast<size_t>(i)]; }
  uint64_t kv_bytes() const;       // every stream's KV storage now
  uint64_t kv_bytes_peak() const;  // the sum of the streams' peaks

 private:
  TokenId token_at(int64_t stream, int64_t n) const;

  const model::Model& model_;
  std::vector<TokenId> corpus_;
  int64_t every_;
  int64_t stride_;  // stream i starts at i * stride_
  std::vector<std::unique_ptr<Session>> sessions_;
  std::unique_ptr<BatchDecoder> decoder_;  // when more than one stream
  SoakProgress progress_;
  int64_t segment_ = 0;
  bool started_ = false;
  double seconds_before_ = 0.0;  // stream time of the earlier segments
  std::chrono::steady_clock::time_point t0_;
  std::vector<double> wall_ms_, cpu_ms_;  // per step of the current interval
  std::vector<BatchDecoder::Entry> entries_;
  std::vector<TokenId> step_tokens_;
};

}  // namespace spillway
