#include <fmt/core.h>

#include <chrono>
#include <optional>
#include <regex>

#include "spillway/core/error.h"
#include "spillway/session/chat.h"
#include "spillway/session/generate.h"

namespace spillway {

GenerateResult generate(Session& session, std::span<const TokenId> prompt, Sampler& sampler,
                        const GenerateOptions& opts, const TokenFn& on_token) {
  if (prompt.empty()) throw InvalidArgument("generate: the prompt is empty (no tokens)");
  const auto cap = session.cache().capacity();
  if (cap && !session.cache().replay_from(0) &&
      session.n_past() + static_cast<int64_t>(prompt.size()) > *cap) {
    // A streaming policy would evict part of the prompt before generation starts.
    throw InvalidArgument(fmt::format(
        "generate: the prompt has {} tokens but the cache of policy '{}' holds {}; use a larger "
        "cache or a shorter prompt",
        session.n_past() + static_cast<int64_t>(prompt.size()), session.cache().describe(), *cap));
  }
  const model::Model& model = session.model();
  const Tokenizer& tok = model.tokenizer();
  const int64_t n_vocab = model.config().n_vocab;
  GenerateResult res;
  res.prompt_tokens = static_cast<int64_t>(prompt.size());
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  session.feed(prompt);
  for (TokenId t : prompt) sampler.accept(t);
  res.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  StreamDecoder dec(tok);
  res.stop_reason = "length";
  t0 = clock::now();
  for (int64_t i = 0; i < opts.max_new_tokens; ++i) {
    const TokenId next = sampler.sample(session.last_logits(), n_vocab);
    if (opts.stop_at_eog && tok.is_eog(next)) {
      res.stop_reason = "eog";
      break;
    }
    sampler.accept(next);
    res.tokens.push_back(next);
    const std::string piece = dec.push(next);
    res.text += piece;
    if (on_token && !on_token(next, piece)) {
      res.stop_reason = "callback";
      break;
    }
    if (i + 1 < opts.max_new_tokens) {
      const TokenId one[1] = {next};
      session.feed(one);
    }
  }
  const std::string rest = dec.flush();
  res.text += rest;
  if (on_token && !rest.empty() && res.stop_reason != "callback") on_token(-1, rest);
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  return res;
}

namespace {

// ChatML templates may insert a default system message when the first message is not a
// system one (SmolLM2 does): its text, taken from the template itself.
std::optional<std::string> chatml_default_system(const std::string& tmpl) {
  std::smatch m;
  static const std::regex kDefaultSystem(R"(<\|im_start\|>system\n([^<]*)<\|im_end\|>)");
  if (tmpl.find("!= 'system'") != std::string::npos && std::regex_search(tmpl, m, kDefaultSystem))
    return m[1].str();
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
    : family_(template_family(tmpl)), system_(std::move(system)) {
  if (family_ == "chatml") {
    if (system_.empty()) system_ = chatml_default_system(tmpl).value_or("");
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
    return system_.empty() ? "" : "<|im_start|>system\n" + system_ + "<|im_end|>\n";
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
