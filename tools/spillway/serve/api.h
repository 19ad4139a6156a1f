// The request side of `spillway serve` without any HTTP: parsing OpenAI-style completion
// requests into typed values, the prefix-reuse rule of conversations, stop strings, and
// the JSON shapes of errors and responses. Pure functions and small values, so that they
// can be tested without a socket or a model.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/session/generate.h"

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
};

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
  bool stream = false;
  std::string conversation_id;  // empty: a one-off request with a fresh session
};

// Parses a request body. Throws ApiError: 400 for malformed JSON, a missing or mistyped
// field, a bad value (max_tokens < 0 or above the limit, temperature < 0, top_p outside
// (0, 1], top_k < 0, a role other than system/user/assistant, an empty stop string),
// 404 for a model name not in limits.model_names, 413 for a prompt over the byte limit.
// `conversation_header` (X-Conversation-Id) wins over the body's conversation_id.
CompletionRequest parse_request(std::string_view body, Endpoint endpoint,
                                const RequestLimits& limits,
                                std::string_view conversation_header = {});

// How to bring a session that has consumed `have` to the state after `want`:
// feed want[from..] on top (reset == false: `have` is a prefix of `want`, and want is
// longer, so that there are logits to sample from), or reset and feed all of `want`.
struct FeedPlan {
  bool reset = false;
  size_t from = 0;  // tokens of `want` already in the session
};
FeedPlan plan_feed(const std::vector<TokenId>& have, const std::vector<TokenId>& want);

// Watches generated text for stop strings. push() returns the text that is safe to send
// now: everything up to a stop string when one appears (then stopped() is true), else
// all but the tail that could still be the start of a stop string (never splitting a
// UTF-8 sequence). finish() returns what was held back once generation ends otherwise.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  std::string push(std::string_view piece);
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string text_;  // everything generated so far
  size_t sent_ = 0;   // bytes of text_ handed out
  bool stopped_ = false;
};

// Bytes at the end of s that begin an incomplete UTF-8 sequence (0..3).
size_t incomplete_utf8_tail(std::string_view s);

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump_json(const nlohmann::json& j);

}  // namespace spillway::serve
