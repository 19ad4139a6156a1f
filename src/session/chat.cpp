#include "spillway/session/chat.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "spillway/core/error.h"

namespace spillway {

namespace {

std::string template_of(const Session& s) {
  auto t = s.model().chat_template();
  if (!t || t->empty())
    throw FormatError(
        "the model has no chat template (tokenizer.chat_template); it is probably a pretrained "
        "base model");
  return *t;
}

}  // namespace

Chat::Chat(Session& session, ChatOptions opts)
    : session_(session), opts_(std::move(opts)), format_(template_of(session), opts_.system) {
  if (session_.n_past() != 0)
    throw InvalidArgument(
        fmt::format("chat: the session already holds {} tokens; a chat starts a fresh stream",
                    session_.n_past()));
}

std::vector<TokenId> Chat::encode_template(std::string_view text, bool bos) const {
  const Tokenizer& tok = session_.model().tokenizer();
  EncodeOptions o;
  o.parse_special = true;
  o.add_bos = false;
  std::vector<TokenId> ids = text.empty() ? std::vector<TokenId>{} : tok.encode(text, o);
  // A template that writes BOS itself (Llama 3) gets no second one.
  if (bos && tok.add_bos() && tok.bos() && (ids.empty() || ids.front() != *tok.bos()))
    ids.insert(ids.begin(), *tok.bos());
  return ids;
}

std::vector<TokenId> Chat::encode_content(std::string_view text) const {
  EncodeOptions o;
  o.add_bos = false;
  return text.empty() ? std::vector<TokenId>{} : session_.model().tokenizer().encode(text, o);
}

ChatReply Chat::send(std::string_view user, Sampler& sampler, const TokenFn& on_token) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const bool first = starts_.empty();
  std::vector<TokenId> turn;
  auto append = [&](const std::vector<TokenId>& ids) {
    turn.insert(turn.end(), ids.begin(), ids.end());
  };
  const int64_t n0 = session_.n_past();
  const size_t new_starts = starts_.size();
  if (first) {
    append(encode_template(format_.start(), /*bos=*/true));
    if (!turn.empty()) starts_.push_back(n0);  // the conversation's start
  }
  // The user message, then the assistant's turn (from its header) as a message of its own.
  starts_.push_back(n0 + static_cast<int64_t>(turn.size()));
  append(encode_template(format_.user_prefix(first)));
  append(encode_content(user));
  append(encode_template(format_.user_suffix()));
  starts_.push_back(n0 + static_cast<int64_t>(turn.size()));
  append(encode_template(format_.assistant_header()));
  for (size_t i = new_starts; i < starts_.size(); ++i) session_.mark_turn_start(starts_[i]);

  ChatReply reply;
  reply.prompt_tokens = static_cast<int64_t>(turn.size());
  reply.answer.prompt_tokens = reply.prompt_tokens;
  Generator gen(session_, sampler, opts_.generate);
  gen.feed(turn);
  reply.answer.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();

  // The answer: every sampled token but an end-of-generation one goes into the stream; the
  // last one is fed with the end of turn.
  const auto t1 = clock::now();
  while (auto piece = gen.next()) {
    if (on_token && !on_token(piece->token, piece->text)) gen.cancel();
  }
  // Close the turn in the stream: the template's end of turn (it begins with the model's
  // end-of-turn token where the template has one, so an answer that ended by itself gets
  // the same tokens as one cut short).
  const std::vector<TokenId> closing = encode_template(format_.assistant_end());
  reply.closing_tokens = static_cast<int64_t>(closing.size());
  gen.feed(closing);
  GenerateResult& res = reply.answer;
  res.tokens = gen.tokens();
  res.text = gen.text();
  res.stop_reason = gen.stop_reason();
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  reply.stream_tokens = session_.n_past();
  return reply;
}

void Chat::reset() {
  session_.reset();
  starts_.clear();
}

ChatStats Chat::stats() const {
  ChatStats s;
  const kv::Cache& cache = session_.cache();
  s.tokens = session_.n_past();
  s.messages = static_cast<int64_t>(starts_.size());
  s.capacity = cache.capacity().value_or(0);
  s.slots = cache.policy().n_slots();
  s.kv_bytes = cache.storage().bytes();
  // What the latest token attended to: the ranges of its plan (a policy's slots may hold
  // more, e.g. the ring slots a batch needs).
  std::vector<int64_t> held;
  const kv::StepPlan& step = cache.step();
  if (step.n_tokens() > 0) {
    const kv::BatchPlan& plan = step.groups[0];
    const kv::TokenPlan& last = plan.tokens.back();
    const std::vector<int64_t> slots = cache.policy().slot_contents();
    for (int32_t r = last.range_begin; r < last.range_end; ++r)
      for (int32_t x = plan.ranges[static_cast<size_t>(r)].begin;
           x < plan.ranges[static_cast<size_t>(r)].end; ++x)
        held.push_back(slots[static_cast<size_t>(x)]);
    std::sort(held.begin(), held.end());
  }
  s.held = static_cast<int64_t>(held.size());
  s.evicted = s.tokens - s.held;
  for (size_t i = 0; i < starts_.size(); ++i) {
    const int64_t begin = starts_[i];
    const int64_t end = i + 1 < starts_.size() ? starts_[i + 1] : s.tokens;
    const auto lo = std::lower_bound(held.begin(), held.end(), begin);
    const auto hi = std::lower_bound(held.begin(), held.end(), end);
    const int64_t n = hi - lo;
    if (n == end - begin && n > 0)
      ++s.messages_whole;
    else if (n > 0)
      ++s.messages_partial;
  }
  return s;
}

}  // namespace spillway
