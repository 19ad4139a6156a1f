// spillway chat: a multi-turn conversation in the terminal (or from a script), in one
// session under a bounded KV-cache policy, each turn encoded once (session/chat.h).
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "command.h"
#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/model/model.h"
#include "spillway/session/chat.h"
#include "util.h"

namespace spillway::cli {
namespace {

struct ChatCliOptions {
  std::string model = kDefaultModel;
  std::string system;
  std::string policy;  // empty: the default for the model (default_policy)
  std::string script;
  std::string json;
  SamplerParams sampling;
  GenerateOptions gen = [] {
    GenerateOptions g;
    g.max_new_tokens = 256;
    return g;
  }();  // per answer: -n, --stop, --ignore-eos
  int threads = 0;
};

// sink:4+W,evict=turn with a cache of min(the model's training context, 2048) tokens.
std::string default_policy(const model::Model& m) {
  const int64_t ctx = m.config().n_ctx_train > 0 ? m.config().n_ctx_train : 2048;
  const int64_t cache = std::clamp<int64_t>(ctx, 64, 2048);
  return fmt::format("sink:4+{},evict=turn", cache - 4);
}

// Ctrl-C: counted here, read by the answer loop and the line reader.
volatile std::sig_atomic_t g_interrupts = 0;
extern "C" void on_sigint(int) {
  g_interrupts = g_interrupts + 1;
}

// Lines from standard input with read(2), so that Ctrl-C at the prompt is seen at once.
class StdinLines {
 public:
  enum class Status { kLine, kEnd, kInterrupted };
  Status next(std::string& line) {
    for (;;) {
      if (g_interrupts > 0) return Status::kInterrupted;
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return Status::kLine;
      }
      char chunk[4096];
      const ssize_t got = ::read(STDIN_FILENO, chunk, sizeof chunk);
      if (got > 0) {
        buf_.append(chunk, static_cast<size_t>(got));
      } else if (got < 0 && errno == EINTR) {
        continue;  // a Ctrl-C is seen at the top of the loop
      } else {
        if (got < 0)
          throw IoError(fmt::format("chat: reading standard input failed (errno {})", errno));
        if (buf_.empty()) return Status::kEnd;
        line.swap(buf_);
        buf_.clear();
        return Status::kLine;
      }
    }
  }

 private:
  std::string buf_;
};

// A script line: plain text, or a JSON object {"user": "..."}.
std::string script_turn(const std::string& line, const std::string& file, int64_t line_no) {
  if (line.empty() || line[0] != '{') return line;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}:{}: not a JSON object: {}", file, line_no, e.what()));
  }
  if (!j.is_object() || !j.contains("user") || !j["user"].is_string())
    throw FormatError(fmt::format("{}:{}: expected {{\"user\": \"...\"}}", file, line_no));
  return j["user"].get<std::string>();
}

void print_stats(const ChatStats& s) {
  fmt::print(
      "[{} tokens in the stream, {} in the cache (capacity {}, {} slots, {}), {} evicted; {} "
      "messages: {} held whole, {} in part]\n",
      s.tokens, s.held, s.capacity > 0 ? std::to_string(s.capacity) : std::string("unbounded"),
      s.slots, human_bytes(s.kv_bytes), s.evicted, s.messages, s.messages_whole,
      s.messages_partial);
}

int run_chat(const ChatCliOptions& o) {
  if (o.gen.max_new_tokens < 1)
    throw InvalidArgument(fmt::format("chat: -n must be >= 1, found {}", o.gen.max_new_tokens));
  auto sampler = make_sampler(o.sampling);
  std::optional<kv::PolicySpec> policy;
  if (!o.policy.empty()) policy = kv::PolicySpec(o.policy);  // usage error before loading
  std::ifstream script;
  if (!o.script.empty()) {
    script.open(o.script);
    if (!script) throw IoError(fmt::format("{}: cannot open the chat script", o.script));
  }
  auto model = model::Model::load(o.model);
  if (!model->chat_template())
    throw UnsupportedError(fmt::format(
        "{}: the model has no chat template (tokenizer.chat_template); it is probably a "
        "pretrained base model, which cannot chat: use `spillway generate` with a plain prompt",
        o.model));
  if (!policy) policy = kv::PolicySpec(default_policy(*model));
  SessionOptions so;
  so.policy = *policy;
  so.threads = o.threads;
  so.max_batch = 64;
  Session session(*model, so);
  ChatOptions co;
  co.system = o.system;
  co.generate = o.gen;
  Chat chat(session, co);

  const bool interactive = o.script.empty();
  const bool tty_in = interactive && isatty(STDIN_FILENO) != 0;
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a read at the prompt returns at once
  struct sigaction old_sa {};
  sigaction(SIGINT, &sa, &old_sa);

  if (stderr_is_tty() || !interactive)
    fmt::print(stderr, "[chat with {} under {}; /reset /stats /quit; Ctrl-C stops an answer]\n",
               o.model, session.cache().describe());

  nlohmann::ordered_json turns = nlohmann::ordered_json::array();
  StdinLines in;
  int64_t line_no = 0;
  bool interrupted_at_prompt = false;
  for (;;) {
    std::fflush(stdout);  // what the last command printed
    std::string line;
    if (interactive) {
      if (tty_in) {
        fmt::print("> ");
        std::fflush(stdout);
      }
      const auto st = in.next(line);
      if (st == StdinLines::Status::kEnd) break;
      if (st == StdinLines::Status::kInterrupted) {
        g_interrupts = 0;
        if (interrupted_at_prompt) break;  // a second Ctrl-C at the prompt
        interrupted_at_prompt = true;
        fmt::print("\n[Ctrl-C again or /quit to leave]\n");
        std::fflush(stdout);
        continue;
      }
    } else {
      if (!std::getline(script, line)) break;
      ++line_no;
      line = script_turn(line, o.script, line_no);
    }
    interrupted_at_prompt = false;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      chat.reset();
      sampler->reset();
      fmt::print("[conversation reset]\n");
      continue;
    }
    if (line == "/stats") {
      print_stats(chat.stats());
      continue;
    }
    if (line[0] == '/' && line.find(' ') == std::string::npos) {
      fmt::print("[unknown command {}; commands: /reset /stats /quit]\n", line);
      continue;
    }
    if (!interactive) fmt::print("user: {}\nassistant: ", line);
    std::fflush(stdout);
    g_interrupts = 0;
    const ChatReply r = chat.send(line, *sampler, [](TokenId, std::string_view text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
      return g_interrupts == 0;
    });
    if (r.answer.stop_reason == StopReason::kCancelled) fmt::print(" [stopped]");
    fmt::print("\n");
    if (!interactive) fmt::print("\n");
    std::fflush(stdout);
    g_interrupts = 0;
    if (!o.json.empty()) {
      const ChatStats s = chat.stats();
      nlohmann::ordered_json t;
      t["turn"] = turns.size();
      t["user"] = line;
      t["answer"] = r.answer.text;
      t["prompt_tokens"] = r.prompt_tokens;
      t["answer_tokens"] = r.answer.tokens.size();
      t["closing_tokens"] = r.closing_tokens;
      t["stop"] = stop_reason_name(r.answer.stop_reason);
      t["stream_tokens"] = r.stream_tokens;
      t["cache_tokens"] = s.held;
      t["cache_capacity"] = s.capacity;
      t["cache_slots"] = s.slots;
      t["kv_bytes"] = s.kv_bytes;
      t["evicted"] = s.evicted;
      t["messages"] = s.messages;
      t["messages_whole"] = s.messages_whole;
      t["messages_partial"] = s.messages_partial;
      t["prefill_seconds"] = r.answer.prefill_seconds;
      t["decode_seconds"] = r.answer.decode_seconds;
      turns.push_back(std::move(t));
    }
  }
  sigaction(SIGINT, &old_sa, nullptr);
  if (interactive && tty_in) fmt::print("\n");
  if (!o.json.empty()) {
    nlohmann::ordered_json j;
    j["model"] = o.model;
    j["policy"] = session.cache().describe();
    j["system"] = o.system;
    j["max_new_tokens"] = o.gen.max_new_tokens;
    j["turns"] = std::move(turns);
    write_file_atomic(o.json, j.dump(2) + "\n");
  }
  return 0;
}

Registrar reg("chat", [](CLI::App& app) {
  auto o = std::make_shared<ChatCliOptions>();
  auto* sub = app.add_subcommand(
      "chat", "Chat with an instruct model in the terminal: many turns in one bounded stream");
  sub->add_option("--model,-m", o->model, "GGUF model file (with a chat template)")
      ->capture_default_str();
  sub->add_option("--system", o->system, "System message (default: the template's, if any)");
  sub->add_option("--policy", o->policy,
                  "KV-cache policy (default: sink:4+W,evict=turn, a cache of min(the model's "
                  "context, 2048) tokens): " +
                      kv::policy_usage());
  sub->add_option("--script", o->script,
                  "Read the user's turns from a file: one per line, or JSON lines {\"user\": ...}");
  sub->add_option("--json", o->json, "Write every turn's prompt, answer, token counts and cache");
  add_generation_options(*sub, o->sampling, o->gen, "Tokens per answer at most");
  sub->add_option("--threads,-t", o->threads, "Threads (0: all cores)");
  return [o] { return run_chat(*o); };
});

}  // namespace
}  // namespace spillway::cli
