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
  kv::PolicySpec policy;
  bool busy = false;
  uint64_t last_used = 0;
  // While watched: the observer on the session, until when, and what was published last.
  std::unique_ptr<analysis::LastTokenAttention> watcher;
  clock_type::time_point watch_until;
  uint64_t version = 0;
  int64_t published_n = -1;
  bool published_busy = false;
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
  if (spec.open_only) {
    if (!spec.prompt.empty())
      throw InvalidArgument("a job that only opens a conversation has no prompt");
    if (spec.conversation_id.empty())
      throw InvalidArgument("a job that only opens a conversation needs its id");
  } else if (spec.prompt.empty()) {
    throw InvalidArgument("the prompt has no tokens");
  }
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

std::shared_ptr<const ConversationView> Scheduler::watch(const std::string& id, uint64_t after,
                                                         std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  const auto now = clock_type::now();
  watch_requests_[id] = now + opts_.watch_ttl;
  const uint64_t round = watch_round_;
  cv_.notify_all();
  // First the decode thread takes the request (a step at most, unless it is stopping).
  views_cv_.wait_for(lk, std::chrono::seconds(30),
                     [&] { return watch_round_ > round || stopping_; });
  views_cv_.wait_until(lk, now + timeout, [&] {
    auto it = views_.find(id);
    return stopping_ || it == views_.end() || it->second->version > after;
  });
  auto it = views_.find(id);
  return it == views_.end() ? nullptr : it->second;
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
      cv_.wait_for(lk, std::chrono::milliseconds(200), [&] {
        return stopping_ || !queue_.empty() || !active_.empty() || !watch_requests_.empty();
      });
      if (stopping_) {
        views_cv_.notify_all();
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
    serve_watches();
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
    for (Conversation* c : watched_) publish(*c);
    refresh_metrics();
  }
}

std::unique_ptr<Session> Scheduler::new_session(const kv::PolicySpec& policy) {
  if (spare_ && spare_->cache().spec().str() == policy.str()) {
    std::unique_ptr<Session> s = std::move(spare_);
    s->reset();
    return s;
  }
  SessionOptions so;
  so.policy = policy;
  so.max_batch = opts_.prefill_chunk;
  auto session = std::make_unique<Session>(model_, so, &pool_);
  session_bytes_estimate_ = std::max(session_bytes_estimate_, session->storage().bytes());
  return session;
}

// Takes the watch requests: a kept conversation is watched (its observer attached) until
// the request's deadline and gets a view at once; an unknown id has none. Conversations
// whose watch ran out lose their observer and view.
void Scheduler::serve_watches() {
  std::unordered_map<std::string, clock_type::time_point> requests;
  {
    std::lock_guard lk(mu_);
    if (watch_requests_.empty() && watched_.empty()) return;
    requests.swap(watch_requests_);
  }
  const auto now = clock_type::now();
  for (auto& [id, until] : requests) {
    auto it = conversations_.find(id);
    if (it == conversations_.end()) {
      forget_view(id);
      continue;
    }
    Conversation& c = *it->second;
    c.watch_until = std::max(c.watch_until, until);
    if (!c.watcher) {
      c.watcher = std::make_unique<analysis::LastTokenAttention>(model_.config());
      c.session->set_observer(c.watcher.get());
      c.published_n = -1;
      watched_.push_back(&c);
    }
    publish(c);
  }
  std::erase_if(watched_, [&](Conversation* c) {
    if (c->watch_until > now) return false;
    c->session->set_observer(nullptr);
    c->watcher.reset();
    forget_view(c->id);
    return true;
  });
  {
    std::lock_guard lk(mu_);
    ++watch_round_;
  }
  views_cv_.notify_all();
}

// A new view of a watched conversation, when its stream or its busy state changed.
void Scheduler::publish(Conversation& c) {
  const int64_t n = c.session->n_past();
  if (n == c.published_n && c.busy == c.published_busy) return;
  auto v = std::make_shared<ConversationView>();
  v->id = c.id;
  v->policy = c.policy.str();
  v->version = ++c.version;
  v->layout =
      analysis::cache_layout(c.session->cache(), n, std::max<int64_t>(0, n - opts_.view_tokens));
  v->token_ids.reserve(v->layout.tokens.size());
  for (const auto& t : v->layout.tokens)
    v->token_ids.push_back(static_cast<size_t>(t.index) < c.tokens.size()
                               ? c.tokens[static_cast<size_t>(t.index)]
                               : TokenId{-1});
  v->attention = c.watcher->shares();
  // A replaying policy's plans count from the start of the replay: shift to the stream.
  const kv::StepPlan& step = c.session->cache().step();
  if (v->attention.stream_index >= 0 && !step.groups.empty() && !step.groups[0].tokens.empty())
    v->attention.stream_index += n - 1 - step.groups[0].tokens.back().stream_index;
  v->capacity = c.session->cache().capacity();
  v->kv_bytes = c.session->storage().bytes();
  v->busy = c.busy;
  c.published_n = n;
  c.published_busy = c.busy;
  {
    std::lock_guard lk(mu_);
    views_[c.id] = std::move(v);
  }
  views_cv_.notify_all();
}

void Scheduler::forget_view(const std::string& id) {
  {
    std::lock_guard lk(mu_);
    views_.erase(id);
  }
  views_cv_.notify_all();
}

// Room for one more session: evicts idle conversations, least recently used first, until
// the session count and the KV budget allow it. False when only busy sessions are left.
// `policy`: the new session's, when one is needed (nullptr: none). The session of an
// evicted conversation under the same policy is kept as the spare that new_session()
// hands out again (reset): its memory is already in place, where a fresh one's pages would
// be faulted in at the next request's expense.
bool Scheduler::make_room(const kv::PolicySpec* policy) {
  const bool need_new_session = policy != nullptr;
  auto alive = [&] { return static_cast<int64_t>(conversations_.size()) + anonymous_sessions_; };
  auto spare_fits = [&] {
    return spare_ && policy && spare_->cache().spec().str() == policy->str();
  };
  for (;;) {
    const uint64_t extra = !need_new_session || spare_fits() ? 0 : session_bytes_estimate_;
    const bool over_count = need_new_session && alive() + 1 > opts_.max_sessions;
    const bool over_bytes =
        opts_.kv_budget > 0 && (alive() > 0 || spare_) && kv_bytes_held() + extra > opts_.kv_budget;
    if (!over_count && !over_bytes) return true;
    if (spare_ && over_bytes && !spare_fits()) {
      spare_.reset();
      continue;
    }
    Conversation* lru = nullptr;
    for (auto& [id, c] : conversations_)
      if (!c->busy && (!lru || c->last_used < lru->last_used)) lru = c.get();
    if (!lru) {
      if (!spare_) return false;
      spare_.reset();
      continue;
    }
    ++counters_.evictions;
    if (lru->watcher) {
      std::erase(watched_, lru);
      forget_view(lru->id);
    }
    if (policy && !spare_ && lru->policy.str() == policy->str()) {
      lru->session->set_observer(nullptr);
      spare_ = std::move(lru->session);
    }
    conversations_.erase(lru->id);
  }
}

// KV storage of every session held: conversations, one-off requests' and the spare.
uint64_t Scheduler::kv_bytes_held() const {
  uint64_t s = spare_ ? spare_->storage().bytes() : 0;
  for (auto& [id, c] : conversations_) s += c->session->storage().bytes();
  for (auto& a : active_)
    if (a->owned) s += a->owned->session->storage().bytes();
  return s;
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
    if (spec.open_only && conversations_.count(spec.conversation_id)) {
      Event err;
      err.kind = Event::Kind::Error;
      err.exists = true;
      err.text = fmt::format("conversation '{}' exists already", spec.conversation_id);
      job->push(std::move(err));
      continue;
    }
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
    const kv::PolicySpec new_policy = spec.policy.value_or(opts_.policy);
    if (need_new) room = make_room(&new_policy);
    if (!room) {
      keep.push_back(job);
      continue;
    }
    Event admitted;
    admitted.kind = Event::Kind::Admitted;
    try {
      // A conversation under another policy starts again with a session of the new one.
      bool policy_changed = false;
      if (conv && spec.policy && spec.policy->str() != conv->policy.str()) {
        auto session = new_session(*spec.policy);
        if (conv->watcher) session->set_observer(conv->watcher.get());
        conv->session = std::move(session);
        conv->policy = *spec.policy;
        conv->tokens.clear();
        conv->published_n = -1;
        policy_changed = true;
      }
      if (need_new) {
        auto c = std::make_unique<Conversation>();
        c->id = spec.conversation_id;
        c->policy = new_policy;
        c->session = new_session(c->policy);
        if (spec.conversation_id.empty()) {
          owned = std::move(c);
          conv = owned.get();
          ++anonymous_sessions_;
        } else {
          conv = c.get();
          conversations_[spec.conversation_id] = std::move(c);
        }
      }
      if (spec.open_only) {
        admitted.reuse = "new";
        conv->last_used = ++lru_clock_;
        job->push(std::move(admitted));
        Event done;
        done.kind = Event::Kind::Done;
        job->push(std::move(done));
        continue;
      }
      auto a = std::make_unique<Active>();
      a->job = job;
      a->conv = conv;
      GenerateOptions go;
      go.max_new_tokens = spec.max_tokens;
      go.stop = spec.stop;
      go.stop_at_eog = !spec.ignore_eos;
      a->gen = spec.sampler
                   ? std::make_unique<Generator>(*conv->session, *spec.sampler, std::move(go))
                   : std::make_unique<Generator>(*conv->session, spec.sampling, std::move(go));
      a->batchable = !conv->session->cache().replay_from(0).has_value();
      a->usage.prompt_tokens = static_cast<int64_t>(spec.prompt.size());
      if (spec.conversation_id.empty()) {
        admitted.reuse = "none";
      } else if (need_new || (conv->tokens.empty() && !policy_changed)) {
        admitted.reuse = "new";  // or opened (open_only) with nothing fed yet
        if (conv->session->n_past() > 0) conv->session->reset();
        ++counters_.reuse_new;
      } else {
        const FeedPlan plan = plan_feed(conv->tokens, spec.prompt);
        if (policy_changed) {
          admitted.reuse = "reset";
          ++counters_.reuse_reset;
        } else if (plan.reset) {
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
  const uint64_t kv = kv_bytes_held();
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
