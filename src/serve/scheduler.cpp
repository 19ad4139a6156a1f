#include "spillway/serve/scheduler.h"

#include <fmt/core.h>

#include <algorithm>
#include <exception>

#include "spillway/core/error.h"
#include "spillway/session/session.h"

namespace spillway::serve {

using clock_type = std::chrono::steady_clock;

FeedPlan plan_feed(const std::vector<TokenId>& have, const std::vector<TokenId>& want) {
  if (!have.empty() && have.size() < want.size() &&
      std::equal(have.begin(), have.end(), want.begin()))
    return {false, have.size()};
  return {true, 0};
}

std::optional<Event> Job::next(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  if (!cv_.wait_for(lk, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  Event e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void Job::push(Event e) {
  {
    std::lock_guard lk(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

struct Scheduler::Conversation {
  std::string id;  // empty: a one-off request's session
  std::unique_ptr<Session> session;
  std::vector<TokenId> tokens;  // what the session has consumed, in order
  bool busy = false;
  uint64_t last_used = 0;
};

struct Scheduler::Active {
  std::shared_ptr<Job> job;
  Conversation* conv = nullptr;
  std::unique_ptr<Conversation> owned;  // a one-off request's session
  std::unique_ptr<Generator> gen;       // sampler, decoder and stop strings of the request
  size_t fed = 0;                       // tokens of the prompt in the session
  bool decoding = false;                // prompt done; the generator samples
  bool batchable = true;                // the policy can share a pass (not a replaying one)
  Usage usage;
  bool done = false;
};

Scheduler::Scheduler(const model::Model& model, const SchedulerOptions& opts)
    : model_(model),
      opts_(opts),
      pool_(opts.threads),
      decoder_(model, std::max<int64_t>(1, opts.max_active), &pool_),
      start_(clock_type::now()) {
  if (opts_.max_sessions < 1) throw InvalidArgument("serve: --max-sessions must be >= 1");
  if (opts_.max_active < 1) throw InvalidArgument("serve: --max-active must be >= 1");
  if (opts_.prefill_chunk < 1) throw InvalidArgument("serve: the prefill chunk must be >= 1");
  opts_.max_active = std::min(opts_.max_active, opts_.max_sessions);
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() {
  stop();
}

std::shared_ptr<Job> Scheduler::submit(JobSpec spec) {
  if (spec.prompt.empty()) throw InvalidArgument("the prompt has no tokens");
  auto job = std::make_shared<Job>();
  job->spec_ = std::move(spec);
  {
    std::lock_guard lk(mu_);
    if (stopping_) throw Unavailable("the server is shutting down");
    queue_.push_back(job);
    metrics_.queued = static_cast<int64_t>(queue_.size());
  }
  cv_.notify_all();
  return job;
}

void Scheduler::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

SchedulerMetrics Scheduler::metrics() const {
  std::lock_guard lk(mu_);
  SchedulerMetrics m = metrics_;
  m.uptime_s = std::chrono::duration<double>(clock_type::now() - start_).count();
  return m;
}

void Scheduler::run() {
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait_for(lk, std::chrono::milliseconds(200),
                   [&] { return stopping_ || !queue_.empty() || !active_.empty(); });
      if (stopping_) {
        for (auto& job : queue_) {
          Event e;
          e.kind = Event::Kind::Error;
          e.unavailable = true;
          e.text = "the server is shutting down";
          job->push(std::move(e));
        }
        queue_.clear();
        lk.unlock();
        for (auto& a : active_) fail(*a, "the server is shutting down", true);
        active_.clear();
        refresh_metrics();
        return;
      }
    }
    admit();
    // Drop what the clients gave up on; their sessions keep what they consumed.
    for (auto& a : active_) {
      if (!a->done && a->job->cancelled()) {
        ++counters_.jobs_cancelled;
        release(*a);
      }
    }
    for (auto& a : active_)
      if (!a->done && !a->decoding) prefill(*a);
    decode_step();
    std::erase_if(active_, [](const auto& a) { return a->done; });
    refresh_metrics();
  }
}

// Room for one more session: evicts idle conversations, least recently used first, until
// the session count and the KV budget allow it. False when only busy sessions are left.
bool Scheduler::make_room(bool need_new_session) {
  auto alive = [&] { return static_cast<int64_t>(conversations_.size()) + anonymous_sessions_; };
  auto kv_sum = [&] {
    uint64_t s = 0;
    for (auto& [id, c] : conversations_) s += c->session->storage().bytes();
    for (auto& a : active_)
      if (a->owned) s += a->owned->session->storage().bytes();
    return s;
  };
  const uint64_t extra = need_new_session ? session_bytes_estimate_ : 0;
  for (;;) {
    const bool over_count = need_new_session && alive() + 1 > opts_.max_sessions;
    const bool over_bytes =
        opts_.kv_budget > 0 && alive() > 0 && kv_sum() + extra > opts_.kv_budget;
    if (!over_count && !over_bytes) return true;
    Conversation* lru = nullptr;
    for (auto& [id, c] : conversations_)
      if (!c->busy && (!lru || c->last_used < lru->last_used)) lru = c.get();
    if (!lru) return false;
    ++counters_.evictions;
    conversations_.erase(lru->id);
  }
}

void Scheduler::admit() {
  std::vector<std::shared_ptr<Job>> waiting;
  {
    std::lock_guard lk(mu_);
    waiting.assign(queue_.begin(), queue_.end());
    queue_.clear();
  }
  std::vector<std::shared_ptr<Job>> keep;
  for (auto& job : waiting) {
    if (job->cancelled()) {
      ++counters_.jobs_cancelled;
      continue;
    }
    const JobSpec& spec = job->spec_;
    Conversation* conv = nullptr;
    std::unique_ptr<Conversation> owned;
    bool room = static_cast<int64_t>(active_.size()) < opts_.max_active;
    if (room && !spec.conversation_id.empty()) {
      auto it = conversations_.find(spec.conversation_id);
      if (it != conversations_.end()) {
        room = !it->second->busy;
        if (room) conv = it->second.get();
      }
    }
    const bool need_new = room && !conv;
    if (need_new) room = make_room(true);
    if (!room) {
      keep.push_back(job);
      continue;
    }
    Event admitted;
    admitted.kind = Event::Kind::Admitted;
    try {
      if (need_new) {
        auto c = std::make_unique<Conversation>();
        c->id = spec.conversation_id;
        SessionOptions so;
        so.policy = opts_.policy;
        so.max_batch = opts_.prefill_chunk;
        c->session = std::make_unique<Session>(model_, so, &pool_);
        session_bytes_estimate_ = std::max(session_bytes_estimate_, c->session->storage().bytes());
        if (spec.conversation_id.empty()) {
          owned = std::move(c);
          conv = owned.get();
          ++anonymous_sessions_;
        } else {
          conv = c.get();
          conversations_[spec.conversation_id] = std::move(c);
        }
      }
      auto a = std::make_unique<Active>();
      a->job = job;
      a->conv = conv;
      GenerateOptions go;
      go.max_new_tokens = spec.max_tokens;
      go.stop = spec.stop;
      a->gen = spec.sampler
                   ? std::make_unique<Generator>(*conv->session, *spec.sampler, std::move(go))
                   : std::make_unique<Generator>(*conv->session, spec.sampling, std::move(go));
      a->batchable = !conv->session->cache().replay_from(0).has_value();
      a->usage.prompt_tokens = static_cast<int64_t>(spec.prompt.size());
      if (spec.conversation_id.empty()) {
        admitted.reuse = "none";
      } else if (need_new) {
        admitted.reuse = "new";
        ++counters_.reuse_new;
      } else {
        const FeedPlan plan = plan_feed(conv->tokens, spec.prompt);
        if (plan.reset) {
          conv->session->reset();
          conv->tokens.clear();
          admitted.reuse = "reset";
          ++counters_.reuse_reset;
        } else {
          a->fed = plan.from;
          // The sampler looks back over the conversation as if it had been fed now.
          a->gen->accept_history(std::span<const TokenId>(spec.prompt.data(), plan.from));
          admitted.reuse = "prefix";
          ++counters_.reuse_prefix;
        }
      }
      a->usage.cached_tokens = static_cast<int64_t>(a->fed);
      counters_.cached_prompt_tokens += a->usage.cached_tokens;
      admitted.usage = a->usage;
      // Nothing throws from here on.
      conv->busy = true;
      conv->last_used = ++lru_clock_;
      a->owned = std::move(owned);
      job->push(std::move(admitted));
      active_.push_back(std::move(a));
    } catch (const std::exception& e) {
      if (owned) --anonymous_sessions_;
      Event err;
      err.kind = Event::Kind::Error;
      err.text = e.what();
      job->push(std::move(err));
      ++counters_.jobs_failed;
    }
  }
  if (!keep.empty()) {
    std::lock_guard lk(mu_);
    queue_.insert(queue_.begin(), keep.begin(), keep.end());
  }
}

void Scheduler::prefill(Active& a) {
  const auto& prompt = a.job->spec_.prompt;
  const size_t n =
      std::min<size_t>(static_cast<size_t>(opts_.prefill_chunk), prompt.size() - a.fed);
  std::span<const TokenId> chunk(prompt.data() + a.fed, n);
  try {
    a.gen->feed(chunk);
  } catch (const std::exception& e) {
    a.conv->session->reset();
    a.conv->tokens.clear();
    fail(a, e.what());
    return;
  }
  a.conv->tokens.insert(a.conv->tokens.end(), chunk.begin(), chunk.end());
  a.fed += n;
  counters_.prompt_tokens += static_cast<int64_t>(n);
  if (a.fed < prompt.size()) return;
  a.decoding = true;
  advance(a);
}

void Scheduler::decode_step() {
  std::vector<Active*> batch;
  std::vector<BatchDecoder::Entry> entries;
  for (auto& a : active_) {
    if (a->done || !a->decoding) continue;
    if (a->batchable) {
      batch.push_back(a.get());
      entries.push_back({a->conv->session.get(), a->gen->pending()});
    } else {
      // A replaying policy recomputes its window per token and cannot share a pass: its
      // generator feeds the token itself.
      advance(*a);
    }
  }
  if (entries.empty()) return;
  try {
    decoder_.step(entries);
  } catch (const std::exception& e) {
    for (Active* a : batch) {
      a->conv->session->reset();
      a->conv->tokens.clear();
      fail(*a, e.what());
    }
    return;
  }
  ++counters_.steps;
  for (Active* a : batch) {
    const std::span<const TokenId> fed = a->gen->pending();
    a->conv->tokens.insert(a->conv->tokens.end(), fed.begin(), fed.end());
    a->gen->mark_pending_fed();
    advance(*a);
  }
}

// One token of a request: the generator feeds its pending token unless a batched step did,
// samples, and says what text is final.
void Scheduler::advance(Active& a) {
  Generator& gen = *a.gen;
  const std::span<const TokenId> unfed = gen.pending();
  const std::vector<TokenId> feeding(unfed.begin(), unfed.end());
  std::optional<GeneratedPiece> piece;
  try {
    piece = gen.next();
  } catch (const std::exception& e) {
    a.conv->session->reset();
    a.conv->tokens.clear();
    fail(a, e.what());
    return;
  }
  a.conv->tokens.insert(a.conv->tokens.end(), feeding.begin(), feeding.end());
  if (piece && piece->token != GeneratedPiece::kNoToken) {
    ++a.usage.completion_tokens;
    ++counters_.completion_tokens;
    recent_tokens_.emplace_back(clock_type::now(), 1);
  }
  if (piece && !piece->text.empty()) {
    Event e;
    e.kind = Event::Kind::Text;
    e.text = std::move(piece->text);
    a.job->push(std::move(e));
  }
  if (gen.done()) finish(a);
}

void Scheduler::finish(Active& a) {
  // What the generator held back (an incomplete character, a possible stop string's start).
  while (auto rest = a.gen->next()) {
    if (rest->text.empty()) continue;
    Event e;
    e.kind = Event::Kind::Text;
    e.text = std::move(rest->text);
    a.job->push(std::move(e));
  }
  Event e;
  e.kind = Event::Kind::Done;
  e.stop = a.gen->stop_reason();
  e.usage = a.usage;
  a.job->push(std::move(e));
  ++counters_.jobs_completed;
  release(a);
}

void Scheduler::fail(Active& a, const std::string& message, bool unavailable) {
  if (a.done) return;
  Event e;
  e.kind = Event::Kind::Error;
  e.text = message;
  e.unavailable = unavailable;
  a.job->push(std::move(e));
  ++counters_.jobs_failed;
  release(a);
}

void Scheduler::release(Active& a) {
  a.done = true;
  a.conv->busy = false;
  a.conv->last_used = ++lru_clock_;
  if (a.owned) {
    a.owned.reset();
    a.conv = nullptr;
    --anonymous_sessions_;
  }
}

void Scheduler::refresh_metrics() {
  const auto now = clock_type::now();
  while (!recent_tokens_.empty() && now - recent_tokens_.front().first > std::chrono::seconds(10))
    recent_tokens_.pop_front();
  int64_t recent = 0;
  for (auto& [t, n] : recent_tokens_) recent += n;
  const double up = std::chrono::duration<double>(now - start_).count();
  uint64_t kv = 0;
  for (auto& [id, c] : conversations_) kv += c->session->storage().bytes();
  for (auto& a : active_)
    if (a->owned) kv += a->owned->session->storage().bytes();
  std::lock_guard lk(mu_);
  const int64_t queued = static_cast<int64_t>(queue_.size());
  metrics_ = counters_;
  metrics_.active = static_cast<int64_t>(
      std::count_if(active_.begin(), active_.end(), [](const auto& a) { return !a->done; }));
  metrics_.queued = queued;
  metrics_.conversations = static_cast<int64_t>(conversations_.size());
  metrics_.sessions = metrics_.conversations + anonymous_sessions_;
  metrics_.kv_bytes = kv;
  metrics_.tokens_per_s = static_cast<double>(recent) / std::min(10.0, std::max(up, 1e-3));
}

}  // namespace spillway::serve
