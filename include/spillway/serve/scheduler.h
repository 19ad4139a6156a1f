// The scheduler behind `spillway serve`, without any HTTP: one decode thread owns every
// Session and runs all active requests together, one token of each per forward pass
// (BatchDecoder), each request generating through its own Generator
// (session/generate.h). New requests' prompts are fed first, in chunks, between steps.
// Other threads only submit jobs and read their events.
//
// Conversations: a job with a conversation id reuses that conversation's Session. The
// scheduler keeps the tokens the session has consumed; when they are a prefix of the new
// prompt only the rest is fed, otherwise the session is reset and fed the whole prompt.
// Idle conversations are evicted least recently used first, to stay within max_sessions
// and the KV byte budget. A conversation runs one job at a time; a second job for it
// waits until the first ends. Each conversation has its own policy (JobSpec::policy, or
// the scheduler's); a job naming another policy than its conversation's starts it again
// under the new one.
//
// Watching: watch() marks a conversation watched for a while (SchedulerOptions::
// watch_ttl, renewed by every call). Only watched conversations record attention (an
// analysis::LastTokenAttention observer on their session) and publish a
// ConversationView after each of their steps; the others run exactly as before.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "spillway/analysis/cache_view.h"
#include "spillway/core/error.h"
#include "spillway/core/thread_pool.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "spillway/session/batch.h"
#include "spillway/session/generate.h"

namespace spillway::serve {

// Thrown by Scheduler::submit once the scheduler is stopping (a server answers 503).
class Unavailable : public Error {
 public:
  using Error::Error;
};

// How to bring a session that has consumed `have` to the state after `want`:
// feed want[from..] on top (reset == false: `have` is a prefix of `want`, and want is
// longer, so that there are logits to sample from), or reset and feed all of `want`.
struct FeedPlan {
  bool reset = false;
  size_t from = 0;  // tokens of `want` already in the session
};
FeedPlan plan_feed(const std::vector<TokenId>& have, const std::vector<TokenId>& want);

struct SchedulerOptions {
  kv::PolicySpec policy = kv::PolicySpec("sink:4+1020");
  int threads = 0;             // threads of the shared pool (0: all cores)
  int64_t max_sessions = 32;   // sessions kept, active and idle together
  uint64_t kv_budget = 0;      // bytes of KV storage of all sessions together (0: no limit)
  int64_t max_active = 16;     // requests decoding together (tokens of one batched step)
  int64_t prefill_chunk = 64;  // prompt tokens fed per request between two steps
  // How long a watch() call keeps a conversation watched.
  std::chrono::milliseconds watch_ttl{30000};
  // Tokens a ConversationView lists at most besides the ones the cache holds (the newest).
  int64_t view_tokens = 4096;
};

struct Usage {
  int64_t prompt_tokens = 0;  // tokens of the whole rendered prompt
  int64_t cached_tokens = 0;  // of those, already in the conversation's session
  int64_t completion_tokens = 0;
};

// What a job reports, in order: Admitted once, Text any number of times, then Done or
// Error (the last event).
struct Event {
  enum class Kind { Admitted, Text, Done, Error };
  Kind kind = Kind::Text;
  std::string text;                     // Text: the next piece; Error: the message
  StopReason stop = StopReason::kNone;  // Done: why generation ended
  Usage usage;                          // Admitted (prompt and cached tokens) and Done
  std::string reuse;         // Admitted: "none" (no conversation), "new", "prefix", "reset"
  bool unavailable = false;  // Error: the scheduler is stopping (else the request failed)
  bool exists = false;       // Error: an open_only job's conversation is kept already
};

struct JobSpec {
  std::vector<TokenId> prompt;  // the whole rendered prompt (at least one token)
  std::string conversation_id;  // empty: a fresh session, dropped at the end
  SamplerParams sampling;
  // A sampler of the caller's instead of one made from `sampling` (e.g. a constrained
  // one); the job owns it, and it is used on the decode thread only.
  std::unique_ptr<Sampler> sampler;
  int64_t max_tokens = 256;
  std::vector<std::string> stop;
  // Generate past end-of-generation tokens, to max_tokens or a stop string.
  bool ignore_eos = false;
  // The conversation's policy: a new conversation is made with it, an existing one under
  // another policy starts again (reuse "reset"). nullopt: the scheduler's policy for a new
  // conversation, the conversation's own for an existing one.
  std::optional<kv::PolicySpec> policy;
  // Only make the conversation and its session, with no prompt (which must be empty) and
  // no generation: the job reports Admitted and Done, or an Error with `exists` set when
  // a conversation of that id is kept already. Needs a conversation id.
  bool open_only = false;
};

// A conversation's cache as its last step left it: the data of the live cache view.
struct ConversationView {
  std::string id;
  std::string policy;    // the conversation's spec
  uint64_t version = 0;  // grows with every view published for the conversation
  analysis::CacheLayout layout;
  std::vector<TokenId> token_ids;       // [layout.tokens.size()]: each listed token's id
  analysis::AttentionShares attention;  // stream_index -1: no step since it was watched
  std::optional<int64_t> capacity;      // tokens a query attends to at most
  uint64_t kv_bytes = 0;                // the session's KV storage
  bool busy = false;                    // a request is running in it
};

// One request in the scheduler. The submitting thread reads events and may cancel; the
// decode thread writes events.
class Job {
 public:
  // The next event, waiting at most `timeout`; nullopt on timeout.
  std::optional<Event> next(std::chrono::milliseconds timeout);
  // Asks the scheduler to drop the job at its next step (the session stays consistent:
  // it keeps the tokens it has consumed). No more events follow once noticed.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

 private:
  friend class Scheduler;
  void push(Event e);

  JobSpec spec_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
};

struct SchedulerMetrics {
  int64_t jobs_completed = 0;
  int64_t jobs_cancelled = 0;
  int64_t jobs_failed = 0;
  int64_t prompt_tokens = 0;         // fed (not counting reused ones)
  int64_t cached_prompt_tokens = 0;  // reused from a conversation's session
  int64_t completion_tokens = 0;
  int64_t reuse_prefix = 0;  // conversation jobs that fed only the new suffix
  int64_t reuse_reset = 0;   // conversation jobs whose session was reset and refed
  int64_t reuse_new = 0;     // conversation jobs that started a new session
  int64_t evictions = 0;
  int64_t steps = 0;  // batched decode passes
  int64_t active = 0;
  int64_t queued = 0;
  int64_t sessions = 0;       // alive (conversations and one-off requests)
  int64_t conversations = 0;  // kept by id
  uint64_t kv_bytes = 0;      // KV storage of all sessions held (a spare one included)
  double tokens_per_s = 0;    // generated tokens per second over the last 10 s
  double uptime_s = 0;
};

class Scheduler {
 public:
  // Starts the decode thread. The model must outlive the scheduler.
  Scheduler(const model::Model& model, const SchedulerOptions& opts);
  ~Scheduler();  // stop()

  // Queues a job. Throws InvalidArgument for a prompt without tokens (or an open_only job
  // with one, or without a conversation id), Unavailable once stopping.
  std::shared_ptr<Job> submit(JobSpec spec);
  // Marks conversation `id` watched (for opts.watch_ttl from now) and returns its view
  // once one newer than version `after` is published, or the latest one when `timeout`
  // passes first; nullptr when no such conversation is kept (never made, or evicted).
  // Thread-safe; waits for the decode thread to have seen the request (which may take a
  // step) before it answers nullptr.
  std::shared_ptr<const ConversationView> watch(const std::string& id, uint64_t after,
                                                std::chrono::milliseconds timeout);
  // Cancels every queued and active job (each gets an Error event, 503) and joins the
  // decode thread. Idempotent.
  void stop();
  SchedulerMetrics metrics() const;

 private:
  struct Conversation;
  struct Active;
  void run();
  void admit();
  bool make_room(const kv::PolicySpec* policy);
  uint64_t kv_bytes_held() const;
  void prefill(Active& a);
  void decode_step();
  void advance(Active& a);
  void finish(Active& a);
  void fail(Active& a, const std::string& message, bool unavailable = false);
  void release(Active& a);
  void refresh_metrics();
  void serve_watches();
  void publish(Conversation& c);
  void forget_view(const std::string& id);
  std::unique_ptr<Session> new_session(const kv::PolicySpec& policy);

  const model::Model& model_;
  SchedulerOptions opts_;
  ThreadPool pool_;
  BatchDecoder decoder_;
  std::chrono::steady_clock::time_point start_;

  mutable std::mutex mu_;  // guards queue_, stopping_, metrics_, the watch state below
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  SchedulerMetrics metrics_;
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> watch_requests_;
  std::unordered_map<std::string, std::shared_ptr<const ConversationView>> views_;
  uint64_t watch_round_ = 0;  // watch requests the decode thread has taken, in rounds
  std::condition_variable views_cv_;

  // Decode thread only.
  std::unordered_map<std::string, std::unique_ptr<Conversation>> conversations_;
  std::vector<Conversation*> watched_;
  std::unique_ptr<Session> spare_;  // an evicted conversation's session, for the next new one
  std::vector<std::unique_ptr<Active>> active_;
  int64_t anonymous_sessions_ = 0;
  uint64_t session_bytes_estimate_ = 0;
  uint64_t lru_clock_ = 0;
  std::deque<std::pair<std::chrono::steady_clock::time_point, int64_t>> recent_tokens_;
  SchedulerMetrics counters_;

  std::thread thread_;
};

}  // namespace spillway::serve
