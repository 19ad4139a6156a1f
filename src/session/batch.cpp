#include "spillway/session/batch.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstring>

#include "spillway/core/error.h"

namespace spillway {

BatchDecoder::BatchDecoder(const model::Model& model, int64_t max_tokens, ThreadPool* pool,
                           int threads)
    : model_(model), max_tokens_(max_tokens) {
  if (max_tokens < 1)
    throw InvalidArgument(
        fmt::format("batch decoder: max_tokens must be >= 1, found {}", max_tokens));
  if (!pool) {
    own_pool_ = std::make_unique<ThreadPool>(threads);
    pool = own_pool_.get();
  }
  forward_ = model.make_forward(*pool, max_tokens);
  steps_.reserve(static_cast<size_t>(max_tokens));
}

BatchDecoder::~BatchDecoder() = default;

void BatchDecoder::step(std::span<const Entry> entries) {
  if (entries.empty()) throw InvalidArgument("batch step: no sessions");
  int64_t total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (!e.session) throw InvalidArgument(fmt::format("batch step: entry {} has no session", i));
    if (&e.session->model() != &model_)
      throw InvalidArgument(
          fmt::format("batch step: entry {}'s session runs another model than the decoder", i));
    for (size_t j = 0; j < i; ++j)
      if (entries[j].session == e.session)
        throw InvalidArgument(
            fmt::format("batch step: entries {} and {} name the same session", j, i));
    const kv::Cache& cache = *e.session->cache_;
    if (cache.replay_from(0))
      throw InvalidArgument(fmt::format(
          "batch step: entry {}'s policy {} recomputes its window for every token and cannot "
          "share a forward pass",
          i, cache.describe()));
    const auto n = static_cast<int64_t>(e.tokens.size());
    if (n < 1 || n > cache.max_step())
      throw InvalidArgument(
          fmt::format("batch step: entry {} has {} tokens; its session takes 1 to {} in one step",
                      i, n, cache.max_step()));
    total += n;
  }
  if (total > max_tokens_)
    throw InvalidArgument(fmt::format(
        "batch step: {} tokens in all, more than the decoder's max_tokens {}", total, max_tokens_));

  // Every plan is made before the pass. The checks above are the ones a plan can fail on
  // for the built-in policies; a custom policy that throws from plan() leaves the sessions
  // planned before it one step ahead of their caches (see the header).
  steps_.clear();
  for (const Entry& e : entries) {
    Session& s = *e.session;
    model::SequenceStep st;
    st.tokens = e.tokens.data();
    st.plan = &s.cache_->plan(s.n_past_, static_cast<int64_t>(e.tokens.size()));
    st.kv = &s.cache_->storage();
    st.logits = model::Logits::kLast;
    st.observer = s.observer_for_step();
    steps_.push_back(st);
  }
  const float* logits = forward_->run_batch(steps_);
  const auto n_vocab = static_cast<size_t>(model_.config().n_vocab);
  for (size_t i = 0; i < entries.size(); ++i) {
    Session& s = *entries[i].session;
    s.n_past_ += static_cast<int64_t>(entries[i].tokens.size());
    s.note_stream_end(s.n_past_);
    std::memcpy(s.last_logits_.data(), logits + i * n_vocab, n_vocab * sizeof(float));
    s.has_logits_ = true;
  }
}

}  // namespace spillway
