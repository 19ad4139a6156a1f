// The OpenAI side of `spillway serve` without any HTTP: parsing completion requests into
// typed values, and the JSON shapes of errors, responses, stream chunks and metrics. Pure
// functions and small values, so that they can be tested without a socket or a model.
// The scheduler that runs the requests is the library's (spillway/serve/scheduler.h).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/serve/scheduler.h"
#include "spillway/session/generate.h"
#include "spillway/tokenizer/tokenizer.h"

namespace spillway::serve {

// A request the server refuses: HTTP status, OpenAI error type and code, and a message
// for people. Thrown by the parsers; the server turns it into
// {"error": {"message", "type", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, std::string code, const std::string& message)
      : std::runtime_error(message),
        status_(status),
        type_(std::move(type)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string type_;
  std::string code_;
};

// {"error": {"message": ..., "type": ..., "code": ...}}
nlohmann::json error_json(const std::string& message, const std::string& type,
                          const std::string& code);

// What a request may ask for.
struct RequestLimits {
  std::vector<std::string> model_names;  // accepted "model" values (empty field: accepted)
  int64_t max_prompt_bytes = 1 << 20;    // prompt text (all messages together): else 413
  int64_t max_tokens_limit = 4096;       // largest max_tokens: else 400
  int64_t default_max_tokens = 256;      // when the request gives none
  size_t max_stop = 16;                  // stop strings at most
  int64_t max_cache = 4096;  // largest cache (tokens a query attends to) of a requested policy
};

// A policy a client asks for (the "policy" field; POST /v1/conversations): a valid spec
// whose cache holds at most limits.max_cache tokens, and no option that names a file on
// the server (fit=). Throws ApiError 400 "invalid_policy" with the parser's message.
kv::PolicySpec parse_client_policy(std::string_view text, const RequestLimits& limits);

// A conversation id nobody can guess: 128 random bits from the kernel (getrandom), as
// "conv-" and 32 hex digits.
std::string random_conversation_id();

enum class Endpoint { Chat, Completion };

// One parsed /v1/chat/completions or /v1/completions request.
struct CompletionRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;                  // as the request named it (may be empty)
  std::vector<ChatMessage> messages;  // chat
  std::string prompt;                 // completion
  int64_t max_tokens = 256;
  SamplerParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;  // "ignore_eos" (as llama-server and vLLM take it)
  bool stream = false;
  std::string conversation_id;           // empty: a one-off request with a fresh session
  std::optional<kv::PolicySpec> policy;  // "policy" (an extension): the conversation's
};

// Parses a request body. Throws ApiError: 400 for malformed JSON, a missing or mistyped
// field, a bad value (max_tokens < 0 or above the limit, temperature < 0, top_p outside
// (0, 1], top_k < 0, a role other than system/user/assistant, an empty stop string),
// 404 for a model name not in limits.model_names, 413 for a prompt over the byte limit.
// `conversation_header` (X-Conversation-Id) wins over the body's conversation_id.
CompletionRequest parse_request(std::string_view body, Endpoint endpoint,
                                const RequestLimits& limits,
                                std::string_view conversation_header = {});

// POST /v1/conversations: {"policy": SPEC} (optional; the server's default otherwise).
// Returns the policy asked for, nullopt when none was. Throws ApiError 400 for malformed
// JSON or a bad policy.
std::optional<kv::PolicySpec> parse_conversation_request(std::string_view body,
                                                         const RequestLimits& limits);

// The live cache view of a conversation (GET /v1/conversations/{id}/cache): tokens with
// their state, slot, key_pos and query_pos, counts, KV bytes and, once a step was
// recorded, per layer and head the last token's attention on sinks, first and newest
// tokens. Token text is the tokenizer's bytes for the token (invalid UTF-8 is replaced
// when dumped).
nlohmann::json cache_view_json(const ConversationView& v, const Tokenizer& tok);

// OpenAI's finish_reason for why a generation ended: "length", or "stop" (the model's
// end of generation or a stop string).
const char* finish_reason(StopReason r);

// {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details":
// {"cached_tokens"}}
nlohmann::json usage_json(const Usage& u);

// What every object of one response repeats: its id, creation time (Unix seconds), the
// model name it answers as, and the endpoint (chat objects differ from completion ones).
struct ResponseHead {
  std::string id;
  int64_t created = 0;
  std::string model;
  Endpoint endpoint = Endpoint::Chat;
};

// A whole response (stream: false): chat.completion with a message, or text_completion.
nlohmann::json completion_json(const ResponseHead& h, const std::string& text, StopReason stop,
                               const Usage& usage);
// Streamed chunks (stream: true), sent as SSE `data:` lines: the chat stream's first chunk
// (the role), a piece of text, and the last chunk (finish reason and usage).
nlohmann::json role_chunk_json(const ResponseHead& h);
nlohmann::json text_chunk_json(const ResponseHead& h, const std::string& text);
nlohmann::json last_chunk_json(const ResponseHead& h, StopReason stop, const Usage& usage);

// GET /v1/models: the model's ids, each {"id", "object": "model", "created", "owned_by"}.
nlohmann::json models_json(const std::vector<std::string>& ids, int64_t created);

// What the HTTP side counts, for GET /metrics.
struct ServerCounters {
  int64_t requests = 0;
  int64_t errors = 0;
  uint64_t kv_budget = 0;
  uint64_t rss_bytes = 0;
};
// GET /metrics as JSON (flat: name -> number), and the same in Prometheus' text format
// (spillway_<name> <value> per line).
nlohmann::json metrics_json(const SchedulerMetrics& m, const ServerCounters& c);
std::string prometheus_text(const nlohmann::json& metrics);

// The HTTP error of a scheduler's Error event: 503 "unavailable" while stopping, else 500.
ApiError event_error(const Event& e);

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump_json(const nlohmann::json& j);

}  // namespace spillway::serve
