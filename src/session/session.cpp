#include "spillway/session/session.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstring>

#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/core/log_spdlog.h"
#include "spillway/core/serial.h"
#include "spillway/model/observer.h"

namespace spillway {

class Session::Observers final : public model::AttentionObserver {
 public:
  explicit Observers(kv::Cache* cache) : cache_(cache) {}
  model::AttentionObserver* user = nullptr;

  void on_attach(const kv::Cache& cache) override {
    if (user) user->on_attach(cache);
  }
  void on_step(const kv::StepPlan& plan) override {
    if (user) user->on_step(plan);
  }
  bool wants_probs(int64_t layer) override {
    const bool mine = cache_->layer_wants_attention(layer);
    return (user && user->wants_probs(layer)) || mine;
  }
  void on_attention(const model::AttentionRecord& r) override {
    if (r.probs && cache_->layer_wants_attention(r.layer)) {
      kv::AttentionFeedback f;
      f.layer = r.layer;
      f.plan = r.plan;
      f.n_tokens = r.n_tokens;
      f.n_head = r.n_head;
      f.probs = r.probs;
      f.offset = r.prob_offset;
      f.lse = r.lse;
      cache_->observe(f);
    }
    if (user) user->on_attention(r);
  }
  void on_hidden(int64_t layer, const float* x, int64_t n, int64_t d) override {
    if (user) user->on_hidden(layer, x, n, d);
  }
  const model::AttentionEdit* edit(int64_t layer) override {
    return user ? user->edit(layer) : nullptr;
  }

 private:
  kv::Cache* cache_;
};

struct Session::Checkpoint {
  const Session* owner = nullptr;
  kv::Cache cache;
  std::vector<float> last_logits;
  bool has_logits = false;
  int64_t n_past = 0;
  std::deque<TokenId> history;
};

Session::Session(const model::Model& model, const SessionOptions& opts, ThreadPool* pool)
    : model_(model), pool_(pool), max_batch_(std::max<int64_t>(1, opts.max_batch)) {
  if (!pool_) {
    own_pool_ = std::make_unique<ThreadPool>(opts.threads);
    pool_ = own_pool_.get();
  }
  const auto& c = model.config();
  cache_ = std::make_unique<kv::Cache>(opts.policy, c.cache_shape(),
                                       kv::PolicyLimits{max_batch_, opts.max_stream},
                                       opts.policy_factory);
  observers_ = std::make_unique<Observers>(cache_.get());
  max_batch_ = cache_->max_batch();
  forward_ = model.make_forward(*pool_, max_batch_);
  forward_->reserve_span(cache_->capacity().value_or(std::max<int64_t>(opts.max_stream, 1)));
  last_logits_.resize(static_cast<size_t>(c.n_vocab));

  // The first stream index whose attention reaches a query-key distance the model was not
  // trained on (distance >= n_ctx_train): at n = n_ctx_train when the span grows with the
  // stream (no capacity), when positions=absolute and the policy keeps tokens older than
  // its window (sinks, heavy hitters: distance n to token 0), or when the cache itself is
  // larger than the trained context; never otherwise.
  const kv::Policy& p = cache_->policy();
  const std::optional<int64_t> cap = p.capacity();
  const bool absolute = p.options().positions == kv::PositionMode::kAbsolute;
  const bool keeps_old = p.n_sinks() > 0 || p.wants_attention();
  if (c.n_ctx_train > 0 && (!cap || (absolute && keeps_old) || *cap > c.n_ctx_train))
    past_context_at_ = c.n_ctx_train;

  auto lg = logger();
  if (lg->should_log(spdlog::level::debug))
    lg->debug(
        "session: policy {}, capacity {}, {} slots, KV {:.1f} MiB ({}), max batch {}, {} "
        "thread(s) ({} pool), past trained context ({}) at {}",
        opts.policy.str(), cap ? std::to_string(*cap) : std::string("unbounded"), p.n_slots(),
        static_cast<double>(cache_->storage().bytes()) / (1024.0 * 1024.0),
        dtype_name(opts.policy.kv_type()), max_batch_, pool_->size(), own_pool_ ? "own" : "shared",
        c.n_ctx_train,
        past_context_at_ < 0 ? std::string("no stream index")
                             : fmt::format("stream index {}", past_context_at_));
}

void Session::note_stream_end(int64_t end) {
  if (past_context_at_ < 0 || warned_past_context_ || end <= past_context_at_) return;
  warned_past_context_ = true;
  const kv::Policy& p = cache_->policy();
  logger()->warn(
      "stream index {} is past the model's trained context of {} tokens under policy {}: {}",
      past_context_at_, model_.config().n_ctx_train, cache_->spec().str(),
      !p.capacity() ? "the cache grows with the stream, and so do query-key distances"
      : p.options().positions == kv::PositionMode::kAbsolute
          ? "positions=absolute puts the kept early tokens at untrained distances"
          : "the cache is larger than the trained context");
}

Session::~Session() = default;

void Session::reset() {
  cache_->reset();
  n_past_ = 0;
  has_logits_ = false;
  history_.clear();
  warned_past_context_ = false;
}

void Session::set_observer(model::AttentionObserver* observer) {
  if (observer) observer->on_attach(*cache_);
  observers_->user = observer;
}

model::AttentionObserver* Session::observer_for_step() {
  return observers_->user || cache_->wants_attention() ? observers_.get() : nullptr;
}

std::shared_ptr<const Session::Checkpoint> Session::checkpoint() const {
  return std::make_shared<const Checkpoint>(
      Checkpoint{this, *cache_, last_logits_, has_logits_, n_past_, history_});
}

void Session::restore(const Checkpoint& cp) {
  if (cp.owner != this) throw InvalidArgument("restore: the checkpoint is of another session");
  *cache_ = cp.cache;
  last_logits_ = cp.last_logits;
  has_logits_ = cp.has_logits;
  n_past_ = cp.n_past;
  history_ = cp.history;
}

namespace {

constexpr char kStateMagic[] = "spillway-session";  // 16 bytes, no terminator in the data
constexpr uint32_t kStateVersion = 1;

// What a state must agree on with the session that loads it.
void put_model_shape(ByteWriter& w, const model::ModelConfig& c) {
  w.put_string(c.architecture);
  for (const int64_t v : {c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_vocab})
    w.put<int64_t>(v);
}

std::string model_shape_text(const std::string& arch, const std::vector<int64_t>& v) {
  return fmt::format("{} with {} layers, n_embd {}, {} heads, {} KV heads, head dim {}, {} tokens",
                     arch, v[0], v[1], v[2], v[3], v[4], v[5]);
}

}  // namespace

std::string Session::save_state() const {
  std::string out(kStateMagic, sizeof(kStateMagic) - 1);
  // One allocation of the whole state where the estimate holds: a long-running process
  // that saves every few minutes (spillway soak --state) then maps and unmaps one block
  // instead of growing a string through every power of two, which the allocator keeps.
  size_t estimate = 4096 + cache_->storage().bytes() + last_logits_.size() * sizeof(float) +
                    history_.size() * sizeof(TokenId);
  for (int g = 0; g < cache_->n_groups(); ++g)
    estimate += 64 * static_cast<size_t>(cache_->group_policy(g).n_slots());
  out.reserve(estimate);
  ByteWriter w(out);
  w.put<uint32_t>(kStateVersion);
  put_model_shape(w, model_.config());
  w.put<int64_t>(max_batch_);
  w.put<int64_t>(n_past_);
  w.put_bool(warned_past_context_);
  w.put_bool(has_logits_);
  if (has_logits_) w.put_vector(last_logits_);
  const std::vector<TokenId> history(history_.begin(), history_.end());
  w.put_vector(history);
  cache_->save(w);
  w.put<uint64_t>(fnv1a64(out));
  return out;
}

void Session::load_state(std::string_view data, const std::string& what) {
  try {
    read_state(data, what);
  } catch (...) {
    reset();
    throw;
  }
}

void Session::read_state(std::string_view data, const std::string& what) {
  ByteReader r(data, what);
  constexpr size_t magic_len = sizeof(kStateMagic) - 1;
  if (data.size() < magic_len + 4 + 8 || data.substr(0, magic_len) != kStateMagic)
    r.fail(fmt::format("not a spillway session state ({} bytes; it begins with \"{}\")",
                       data.size(), kStateMagic));
  const uint64_t sum = fnv1a64(data.substr(0, data.size() - 8));
  uint64_t stored;
  std::memcpy(&stored, data.data() + data.size() - 8, 8);
  if (sum != stored)
    r.fail(
        fmt::format("checksum {:016x} does not match the data's {:016x}: the file is damaged "
                    "or truncated",
                    stored, sum));
  ByteReader in(data.substr(0, data.size() - 8), what);  // offsets from the file's start
  in.skip(magic_len, "magic");
  const auto version = in.get<uint32_t>("version");
  if (version != kStateVersion)
    in.fail(fmt::format("version {}, this build reads version {}", version, kStateVersion));
  const auto& c = model_.config();
  const std::string arch = in.get_string("model architecture", 256);
  std::vector<int64_t> shape;
  for (const char* f : {"n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_vocab"})
    shape.push_back(in.get<int64_t>(f));
  const std::vector<int64_t> mine = {c.n_layer,   c.n_embd,   c.n_head,
                                     c.n_head_kv, c.head_dim, c.n_vocab};
  if (arch != c.architecture || shape != mine)
    in.fail(fmt::format("the state is of a model {}, this session's is {}",
                        model_shape_text(arch, shape), model_shape_text(c.architecture, mine)));
  const auto max_batch = in.get<int64_t>("max batch");
  if (max_batch != max_batch_)
    in.fail(fmt::format("the state is of a session of max batch {}, this one's is {}", max_batch,
                        max_batch_));
  const auto n_past = in.get<int64_t>("stream position");
  if (n_past < 0 || n_past > (int64_t{1} << 53))
    in.fail(fmt::format("stream position {} outside 0..2^53", n_past));
  const bool warned = in.get_bool("past-context warning");
  const bool has_logits = in.get_bool("has logits");
  std::vector<float> logits;
  if (has_logits)
    logits = in.get_vector_exact<float>("last logits", static_cast<size_t>(c.n_vocab));
  const std::vector<TokenId> history = in.get_vector<TokenId>("replay tokens", 1 << 24);
  for (const TokenId t : history)
    if (t < 0 || t >= c.n_vocab)
      in.fail(fmt::format("replay token {} outside the vocabulary of {}", t, c.n_vocab));
  cache_->load(in);
  const bool replay = cache_->replay_from(0).has_value();
  const int64_t want_history = replay ? std::min(n_past, *cache_->capacity()) : 0;
  if (static_cast<int64_t>(history.size()) != want_history)
    in.fail(fmt::format("{} replay tokens at stream position {}, {} expected", history.size(),
                        n_past, want_history));
  if (!replay && cache_->n_planned() != n_past)
    in.fail(fmt::format("stream position {} but the cache planned {} tokens", n_past,
                        cache_->n_planned()));
  if (in.remaining() != 0) in.fail(fmt::format("{} byte(s) after the state", in.remaining()));
  n_past_ = n_past;
  warned_past_context_ = warned;
  has_logits_ = has_logits;
  if (has_logits) last_logits_ = std::move(logits);
  history_.assign(history.begin(), history.end());
}

void Session::save(const std::string& path) const {
  write_file_atomic(path, save_state());
}

void Session::load(const std::string& path) {
  load_state(read_file(path), path);
}

void Session::seek(int64_t n) {
  if (n < n_past_)
    throw InvalidArgument(
        fmt::format("seek to stream index {}: the stream is already at {}", n, n_past_));
  if (cache_->replay_from(0))
    throw InvalidArgument(fmt::format(
        "seek to stream index {}: policy '{}' replays the tokens before, so it cannot skip them", n,
        cache_->spec().str()));
  cache_->seek(n);
  n_past_ = n;
  has_logits_ = false;
  note_stream_end(n);
}

int64_t Session::feed(std::span<const TokenId> tokens, const LogitsFn& on_logits) {
  bool stop = false;
  int64_t done = 0;
  const bool replay = cache_->replay_from(0).has_value();
  if (replay && !on_logits && tokens.size() > 1) {
    // Only the last token's logits are kept: the others need no replay of their own.
    advance(tokens.first(tokens.size() - 1));
    done = static_cast<int64_t>(tokens.size()) - 1;
  }
  while (done < static_cast<int64_t>(tokens.size()) && !stop) {
    if (replay) {
      feed_replay(tokens[static_cast<size_t>(done)], on_logits, &stop);
      ++done;
    } else {
      const int64_t count = std::min<int64_t>(cache_->max_step(), tokens.size() - done);
      feed_batch(tokens.data() + done, count, on_logits, &stop);
      done += count;
    }
  }
  return done;
}

void Session::advance(std::span<const TokenId> tokens) {
  if (cache_->replay_from(0)) {
    const int64_t window = *cache_->capacity();
    for (TokenId t : tokens) {
      history_.push_back(t);
      if (static_cast<int64_t>(history_.size()) > window) history_.pop_front();
    }
    n_past_ += static_cast<int64_t>(tokens.size());
    has_logits_ = false;
    return;
  }
  for (size_t done = 0; done < tokens.size();) {
    const int64_t count =
        std::min<int64_t>(cache_->max_step(), static_cast<int64_t>(tokens.size() - done));
    feed_batch(tokens.data() + done, count, {}, nullptr);
    done += static_cast<size_t>(count);
  }
  has_logits_ = false;
}

void Session::feed_batch(const TokenId* tokens, int64_t count, const LogitsFn& on_logits,
                         bool* stop) {
  const kv::StepPlan& plan = cache_->plan(n_past_, count);
  forward_->set_observer(observer_for_step());
  const int64_t n_vocab = model_.config().n_vocab;
  const model::Logits which = stop == nullptr ? model::Logits::kNone
                              : on_logits     ? model::Logits::kAll
                                              : model::Logits::kLast;
  const float* logits = forward_->run(tokens, plan, cache_->storage(), which);
  n_past_ += count;
  note_stream_end(n_past_);
  if (which == model::Logits::kNone) return;
  const float* last = on_logits ? logits + (count - 1) * n_vocab : logits;
  std::memcpy(last_logits_.data(), last, static_cast<size_t>(n_vocab) * sizeof(float));
  has_logits_ = true;
  if (on_logits) {
    for (int64_t i = 0; i < count; ++i) {
      if (!on_logits(n_past_ - count + i, logits + i * n_vocab)) {
        *stop = true;
        break;
      }
    }
  }
}

void Session::feed_replay(TokenId token, const LogitsFn& on_logits, bool* stop) {
  const int64_t n = n_past_;
  const int64_t window = *cache_->capacity();
  history_.push_back(token);
  while (static_cast<int64_t>(history_.size()) > window) history_.pop_front();
  const int64_t start = *cache_->replay_from(n);
  const int64_t len = n - start + 1;  // == history_.size()
  std::vector<TokenId>& replay = replay_tokens_;
  replay.assign(history_.end() - len, history_.end());
  cache_->reset();
  const float* logits = nullptr;
  for (int64_t done = 0; done < len;) {
    const int64_t count = std::min<int64_t>(max_batch_, len - done);
    const kv::StepPlan& plan = cache_->plan(done, count);
    forward_->set_observer(observer_for_step());
    logits = forward_->run(replay.data() + done, plan, cache_->storage(),
                           done + count == len ? model::Logits::kLast : model::Logits::kNone);
    done += count;
  }
  const int64_t n_vocab = model_.config().n_vocab;
  std::memcpy(last_logits_.data(), logits, static_cast<size_t>(n_vocab) * sizeof(float));
  has_logits_ = true;
  n_past_ = n + 1;
  note_stream_end(n_past_);
  if (on_logits && !on_logits(n, last_logits_.data())) *stop = true;
}

}  // namespace spillway
