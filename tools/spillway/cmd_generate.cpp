// spillway generate: continue a prompt (or answer it as a chat) under a KV-cache policy,
// streaming tokens to stdout as they are produced.
#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "command.h"
#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/session/generate.h"
#include "util.h"

namespace spillway::cli {
namespace {

struct GenerateCliOptions {
  std::string model = kDefaultModel;
  std::string prompt;
  std::string system;
  std::string messages;  // a JSON file of chat messages (with --chat, instead of --prompt)
  SamplerParams sampling;
  GenerateOptions gen;  // -n, --stop, --ignore-eos
  std::string policy = "full";
  int threads = 0;
  bool chat = false;
  bool stats = false;
};

int run_generate(const GenerateCliOptions& o) {
  if (!o.messages.empty() && !o.chat) throw InvalidArgument("generate: --messages needs --chat");
  if (o.messages.empty() && o.prompt.empty()) throw InvalidArgument("generate: --prompt is empty");
  if (o.gen.max_new_tokens < 0)
    throw InvalidArgument(fmt::format("generate: -n must be >= 0, found {}", o.gen.max_new_tokens));
  auto sampler = make_sampler(o.sampling);
  const kv::PolicySpec policy(o.policy);  // a bad spec is a usage error before the model loads
  auto model = model::Model::load(o.model);
  const Tokenizer& tok = model->tokenizer();
  std::vector<TokenId> prompt;
  if (o.chat) {
    const auto tmpl = model->chat_template();
    if (!tmpl)
      throw UnsupportedError(fmt::format(
          "{}: the model has no chat template (tokenizer.chat_template); it is probably a "
          "pretrained base model: drop --chat and give a plain prompt",
          o.model));
    std::vector<ChatMessage> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    if (!o.messages.empty()) {
      // [{"role": ..., "content": ...}, ...]: a whole conversation, as a server gets it.
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(read_file(o.messages));
        for (const auto& m : j)
          msgs.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      } catch (const nlohmann::json::exception& e) {
        throw InvalidArgument(fmt::format(
            "generate: {}: expected a JSON array of {{\"role\", \"content\"}} objects: {}",
            o.messages, e.what()));
      }
      if (msgs.empty()) throw InvalidArgument(fmt::format("generate: {}: no messages", o.messages));
    } else {
      msgs.push_back({"user", o.prompt});
    }
    EncodeOptions special;
    special.parse_special = true;
    prompt = tok.encode(apply_chat_template(*tmpl, msgs), special);
  } else {
    prompt = tok.encode(o.prompt);
  }
  SessionOptions so;
  so.policy = policy;
  so.threads = o.threads;
  so.max_batch = 256;
  so.max_stream = static_cast<int64_t>(prompt.size()) + o.gen.max_new_tokens;
  Session session(*model, so);
  if (!o.chat) {
    std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
    std::fflush(stdout);
  }
  const GenerateResult r =
      generate(session, prompt, *sampler, o.gen, [](TokenId, std::string_view text) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        return true;
      });
  std::fputc('\n', stdout);
  if (o.stats || stderr_is_tty()) {
    fmt::print(stderr,
               "[{} prompt tokens in {:.2f}s ({:.1f} tok/s); {} new tokens in {:.2f}s ({:.1f} "
               "tok/s); stop: {}; policy {}]\n",
               r.prompt_tokens, r.prefill_seconds,
               r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0.0, r.tokens.size(),
               r.decode_seconds, r.decode_seconds > 0 ? r.tokens.size() / r.decode_seconds : 0.0,
               stop_reason_name(r.stop_reason), session.cache().describe());
  }
  return 0;
}

Registrar reg("generate", [](CLI::App& app) {
  auto o = std::make_shared<GenerateCliOptions>();
  auto* sub = app.add_subcommand("generate", "Generate text from a prompt, streaming to stdout");
  sub->add_option("--model,-m", o->model, "GGUF model file")->capture_default_str();
  auto* prompt = sub->add_option("--prompt", o->prompt, "Prompt text");
  auto* messages = sub->add_option(
      "--messages", o->messages,
      "With --chat: a JSON file of messages [{\"role\", \"content\"}, ...] instead of --prompt");
  prompt->excludes(messages);
  sub->callback([prompt, messages] {
    if (prompt->count() == 0 && messages->count() == 0)
      throw CLI::RequiredError("--prompt or --messages");
  });
  add_generation_options(*sub, o->sampling, o->gen, "Tokens to generate at most");
  sub->add_option("--policy", o->policy, "KV-cache policy: " + kv::policy_usage())
      ->capture_default_str();
  sub->add_option("--threads,-t", o->threads, "Threads (0: all cores)");
  sub->add_flag("--chat", o->chat, "Format the prompt with the model's chat template");
  sub->add_option("--system", o->system, "System message for --chat");
  sub->add_flag("--stats", o->stats, "Print timing to stderr");
  return [o] { return run_generate(*o); };
});

}  // namespace
}  // namespace spillway::cli
