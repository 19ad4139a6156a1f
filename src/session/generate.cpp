#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "../tokenizer/utf8.h"
#include "spillway/core/error.h"
#include "spillway/session/chat.h"
#include "spillway/session/generate.h"

namespace spillway {

std::string_view stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kLength:
      return "length";
    case StopReason::kEndOfGeneration:
      return "eog";
    case StopReason::kStopString:
      return "stop";
    case StopReason::kCancelled:
      return "cancelled";
    case StopReason::kNone:
      break;
  }
  return "none";
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const auto& s : stops_) {
    if (s.empty()) throw InvalidArgument("generate: a stop string is empty");
    longest_ = std::max(longest_, s.size());
  }
}

std::string StopMatcher::push(std::string_view piece) {
  if (stopped_) return {};
  text_ += piece;
  // A stop string that ends in the new text starts at or after this point.
  const size_t search_from = sent_ > longest_ ? sent_ - longest_ : 0;
  size_t first = std::string::npos;
  for (const auto& s : stops_) {
    const size_t at = text_.find(s, search_from);
    if (at != std::string::npos) first = std::min(first, at);
  }
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = first > sent_ ? text_.substr(sent_, first - sent_) : std::string();
    sent_ = text_.size();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string, and never end
  // inside a UTF-8 sequence.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t k = std::min(s.size() - 1, text_.size() - sent_); k > hold; --k) {
      if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  const std::string_view ready = std::string_view(text_).substr(sent_, text_.size() - hold - sent_);
  const size_t end = sent_ + tokenizer_detail::utf8_complete_prefix(ready);
  std::string out = text_.substr(sent_, end - sent_);
  sent_ = end;
  return out;
}

std::string StopMatcher::finish() {
  if (stopped_) return {};
  std::string out = text_.substr(sent_);
  sent_ = text_.size();
  return out;
}

Generator::Generator(Session& session, Sampler& sampler, GenerateOptions opts)
    : session_(session),
      sampler_(sampler),
      opts_(std::move(opts)),
      decoder_(session.model().tokenizer()),
      matcher_(opts_.stop) {
  if (opts_.max_new_tokens < 0)
    throw InvalidArgument(
        fmt::format("generate: max_new_tokens must be >= 0, found {}", opts_.max_new_tokens));
}

Generator::Generator(Session& session, const SamplerParams& params, GenerateOptions opts)
    : session_(session),
      owned_sampler_(make_sampler(params)),
      sampler_(*owned_sampler_),
      opts_(std::move(opts)),
      decoder_(session.model().tokenizer()),
      matcher_(opts_.stop) {
  if (opts_.max_new_tokens < 0)
    throw InvalidArgument(
        fmt::format("generate: max_new_tokens must be >= 0, found {}", opts_.max_new_tokens));
}

Generator::~Generator() = default;

void Generator::feed(std::span<const TokenId> tokens) {
  if (has_pending_) {
    // One pass for the pending token and what follows it, as one feed of both would be.
    std::vector<TokenId> all;
    all.reserve(tokens.size() + 1);
    all.push_back(pending_[0]);
    all.insert(all.end(), tokens.begin(), tokens.end());
    session_.feed(all);
    has_pending_ = false;
  } else if (!tokens.empty()) {
    session_.feed(tokens);
  }
  for (TokenId t : tokens) sampler_.accept(t);
}

void Generator::accept_history(std::span<const TokenId> tokens) {
  for (TokenId t : tokens) sampler_.accept(t);
}

std::span<const TokenId> Generator::pending() const {
  return {pending_, has_pending_ ? 1u : 0u};
}

void Generator::mark_pending_fed() {
  has_pending_ = false;
}

void Generator::stop(StopReason why) {
  if (stop_ == StopReason::kNone) stop_ = why;
}

std::string Generator::drain() {
  if (tail_given_) return {};
  tail_given_ = true;
  std::string rest;
  if (!matcher_.stopped()) {
    rest = matcher_.push(decoder_.flush());
    rest += matcher_.finish();
  }
  text_ += rest;
  return rest;
}

void Generator::cancel() {
  stop(StopReason::kCancelled);
  drain();
}

std::optional<GeneratedPiece> Generator::next() {
  if (stop_ == StopReason::kNone && static_cast<int64_t>(tokens_.size()) >= opts_.max_new_tokens)
    stop(StopReason::kLength);
  if (stop_ != StopReason::kNone) {
    std::string rest = drain();
    if (rest.empty()) return std::nullopt;
    return GeneratedPiece{GeneratedPiece::kNoToken, std::move(rest)};
  }
  if (has_pending_) {
    session_.feed(pending());
    has_pending_ = false;
  }
  const float* logits = session_.last_logits();
  if (logits == nullptr)
    throw InvalidArgument("generate: nothing was fed to the session yet (no logits to sample)");
  const model::Model& model = session_.model();
  const TokenId token = sampler_.sample(logits, model.config().n_vocab);
  if (opts_.stop_at_eog && model.tokenizer().is_eog(token)) {
    stop(StopReason::kEndOfGeneration);
    return next();
  }
  sampler_.accept(token);
  tokens_.push_back(token);
  pending_[0] = token;
  has_pending_ = true;
  GeneratedPiece piece{token, matcher_.push(decoder_.push(token))};
  text_ += piece.text;
  if (matcher_.stopped())
    stop(StopReason::kStopString);
  else if (static_cast<int64_t>(tokens_.size()) >= opts_.max_new_tokens)
    stop(StopReason::kLength);
  return piece;
}

void check_prompt_fits(const Session& session, int64_t n_prompt) {
  if (n_prompt <= 0) throw InvalidArgument("generate: the prompt is empty (no tokens)");
  const auto cap = session.cache().capacity();
  if (cap && !session.cache().replay_from(0) && session.n_past() + n_prompt > *cap) {
    // A streaming policy would evict part of the prompt before generation starts.
    throw InvalidArgument(fmt::format(
        "generate: the prompt has {} tokens but the cache of policy '{}' holds {}; use a larger "
        "cache or a shorter prompt",
        session.n_past() + n_prompt, session.cache().describe(), *cap));
  }
}

GenerateResult generate(Session& session, std::span<const TokenId> prompt, Sampler& sampler,
                        const GenerateOptions& opts, const TokenFn& on_token) {
  check_prompt_fits(session, static_cast<int64_t>(prompt.size()));
  Generator gen(session, sampler, opts);
  GenerateResult res;
  res.prompt_tokens = static_cast<int64_t>(prompt.size());
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  gen.feed(prompt);
  res.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  t0 = clock::now();
  while (auto piece = gen.next()) {
    if (on_token && !on_token(piece->token, piece->text)) gen.cancel();
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  res.tokens = gen.tokens();
  res.text = gen.text();
  res.stop_reason = gen.stop_reason();
  return res;
}

namespace {

// ChatML templates may insert a default system message when the first message is not a
// system one (SmolLM2 does): its text, taken from the template itself.
std::optional<std::string> chatml_default_system(const std::string& tmpl) {
  if (tmpl.find("!= 'system'") == std::string::npos) return std::nullopt;
  // The first "<|im_start|>system\n" whose text runs to "<|im_end|>" without another tag.
  constexpr std::string_view kOpen = "<|im_start|>system\n", kClose = "<|im_end|>";
  for (size_t at = tmpl.find(kOpen); at != std::string::npos; at = tmpl.find(kOpen, at + 1)) {
    const size_t begin = at + kOpen.size(), end = tmpl.find('<', begin);
    if (end != std::string::npos && tmpl.compare(end, kClose.size(), kClose) == 0)
      return tmpl.substr(begin, end - begin);
  }
  return std::nullopt;
}

const char* template_family(const std::string& tmpl) {
  if (tmpl.empty()) throw FormatError("the model has no chat template (tokenizer.chat_template)");
  if (tmpl.find("<|im_start|>") != std::string::npos) return "chatml";
  if (tmpl.find("<|start_header_id|>") != std::string::npos) return "llama3";
  if (tmpl.find("<|user|>") != std::string::npos) return "zephyr";
  if (tmpl.find("[INST]") != std::string::npos) return "llama2";
  throw UnsupportedError(
      "chat template not recognized (supported families: ChatML, Llama 3, Llama 2, Zephyr)");
}

}  // namespace

std::string apply_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  if (tmpl.empty()) throw FormatError("the model has no chat template (tokenizer.chat_template)");
  std::string out;
  if (tmpl.find("<|im_start|>") != std::string::npos) {
    const auto default_system = chatml_default_system(tmpl);
    if (default_system && (messages.empty() || messages[0].role != "system"))
      out += "<|im_start|>system\n" + *default_system + "<|im_end|>\n";
    for (const auto& msg : messages)
      out += "<|im_start|>" + msg.role + "\n" + msg.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }
  if (tmpl.find("<|start_header_id|>") != std::string::npos) {
    out += "<|begin_of_text|>";
    for (const auto& msg : messages)
      out +=
          "<|start_header_id|>" + msg.role + "<|end_header_id|>\n\n" + msg.content + "<|eot_id|>";
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
  }
  if (tmpl.find("<|user|>") != std::string::npos) {
    for (const auto& msg : messages) out += "<|" + msg.role + "|>\n" + msg.content + "</s>\n";
    if (add_generation_prompt) out += "<|assistant|>\n";
    return out;
  }
  if (tmpl.find("[INST]") != std::string::npos) {
    std::string system;
    for (const auto& msg : messages) {
      if (msg.role == "system") {
        system = "<<SYS>>\n" + msg.content + "\n<</SYS>>\n\n";
      } else if (msg.role == "user") {
        out += "[INST] " + system + msg.content + " [/INST]";
        system.clear();
      } else {
        out += " " + msg.content + " </s>";
      }
    }
    return out;
  }
  throw UnsupportedError(
      "chat template not recognized (supported families: ChatML, Llama 3, Llama 2, Zephyr)");
}

ChatFormat::ChatFormat(const std::string& tmpl, std::string system)
    : family_(template_family(tmpl)), system_(std::move(system)), has_system_(!system_.empty()) {
  if (family_ == "chatml") {
    // The template's default system message, when it has one, even an empty one: the
    // template writes its block then too.
    if (system_.empty()) {
      const auto fallback = chatml_default_system(tmpl);
      has_system_ = fallback.has_value();
      system_ = fallback.value_or("");
    }
    user_suffix_ = "<|im_end|>\n";
    assistant_header_ = "<|im_start|>assistant\n";
    assistant_end_ = "<|im_end|>\n";
  } else if (family_ == "llama3") {
    user_suffix_ = "<|eot_id|>";
    assistant_header_ = "<|start_header_id|>assistant<|end_header_id|>\n\n";
    assistant_end_ = "<|eot_id|>";
  } else if (family_ == "zephyr") {
    user_suffix_ = "</s>\n";
    assistant_header_ = "<|assistant|>\n";
    assistant_end_ = "</s>\n";
  } else {  // llama2
    user_suffix_ = " [/INST]";
    assistant_end_ = " </s>";
  }
}

std::string ChatFormat::start() const {
  if (family_ == "chatml")
    return has_system_ ? "<|im_start|>system\n" + system_ + "<|im_end|>\n" : "";
  if (family_ == "llama3")
    return "<|begin_of_text|>" +
           (system_.empty()
                ? ""
                : "<|start_header_id|>system<|end_header_id|>\n\n" + system_ + "<|eot_id|>");
  if (family_ == "zephyr") return system_.empty() ? "" : "<|system|>\n" + system_ + "</s>\n";
  return "";
}

std::string ChatFormat::user_prefix(bool first) const {
  if (family_ == "chatml") return "<|im_start|>user\n";
  if (family_ == "llama3") return "<|start_header_id|>user<|end_header_id|>\n\n";
  if (family_ == "zephyr") return "<|user|>\n";
  return first && !system_.empty() ? "[INST] <<SYS>>\n" + system_ + "\n<</SYS>>\n\n" : "[INST] ";
}

std::string ChatFormat::user(std::string_view content, bool first) const {
  return user_prefix(first) + std::string(content) + user_suffix_;
}

}  // namespace spillway
