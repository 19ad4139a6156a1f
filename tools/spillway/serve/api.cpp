#include "api.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>

namespace spillway::serve {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& message, const std::string& param = {}) {
  throw ApiError(400, "invalid_request_error", param.empty() ? "invalid_request" : "invalid_value",
                 message);
}

const char* type_name(const json& j) {
  return j.type_name();
}

std::string get_string(const json& body, const char* key) {
  const auto& v = body.at(key);
  if (!v.is_string()) bad(fmt::format("'{}' must be a string, found {}", key, type_name(v)), key);
  return v.get<std::string>();
}

double get_number(const json& body, const char* key) {
  const auto& v = body.at(key);
  if (!v.is_number()) bad(fmt::format("'{}' must be a number, found {}", key, type_name(v)), key);
  const double d = v.get<double>();
  if (!std::isfinite(d)) bad(fmt::format("'{}' must be finite", key), key);
  return d;
}

int64_t get_integer(const json& body, const char* key) {
  const auto& v = body.at(key);
  if (!v.is_number_integer()) {
    // 16.0 is fine; 16.5 and "16" are not.
    if (v.is_number_float() && std::isfinite(v.get<double>()) &&
        v.get<double>() == std::floor(v.get<double>()) && std::fabs(v.get<double>()) < 9e15)
      return static_cast<int64_t>(v.get<double>());
    bad(fmt::format("'{}' must be an integer, found {}", key, type_name(v)), key);
  }
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    bad(fmt::format("'{}' is too large", key), key);
  return v.get<int64_t>();
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& m, size_t i) {
  if (!m.contains("content") || m["content"].is_null()) return {};
  const auto& c = m["content"];
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {
    std::string out;
    for (const auto& part : c) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string())
        bad(fmt::format("messages[{}].content: only parts of type 'text' are supported", i),
            "messages");
      out += part["text"].get<std::string>();
    }
    return out;
  }
  bad(fmt::format("messages[{}].content must be a string or an array of text parts, found {}", i,
                  type_name(c)),
      "messages");
}

}  // namespace

json error_json(const std::string& message, const std::string& type, const std::string& code) {
  return json{{"error", {{"message", message}, {"type", type}, {"code", code}}}};
}

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

CompletionRequest parse_request(std::string_view body_text, Endpoint endpoint,
                                const RequestLimits& limits, std::string_view conversation_header) {
  json body;
  try {
    body = json::parse(body_text);
  } catch (const json::parse_error& e) {
    throw ApiError(400, "invalid_request_error", "invalid_json",
                   fmt::format("the body is not valid JSON: {}", e.what()));
  }
  if (!body.is_object())
    bad(fmt::format("the body must be a JSON object, found {}", type_name(body)));
  CompletionRequest r;
  r.endpoint = endpoint;
  r.max_tokens = limits.default_max_tokens;

  if (body.contains("model") && !body["model"].is_null()) {
    r.model = get_string(body, "model");
    const auto& names = limits.model_names;
    if (!r.model.empty() && std::find(names.begin(), names.end(), r.model) == names.end())
      throw ApiError(404, "invalid_request_error", "model_not_found",
                     fmt::format("the model '{}' does not exist; this server has '{}'", r.model,
                                 names.empty() ? std::string() : names.front()));
  }

  int64_t prompt_bytes = 0;
  if (endpoint == Endpoint::Chat) {
    if (!body.contains("messages")) bad("'messages' is required", "messages");
    const auto& msgs = body["messages"];
    if (!msgs.is_array()) bad("'messages' must be an array", "messages");
    if (msgs.empty()) bad("'messages' must not be empty", "messages");
    for (size_t i = 0; i < msgs.size(); ++i) {
      const auto& m = msgs[i];
      if (!m.is_object()) bad(fmt::format("messages[{}] must be an object", i), "messages");
      if (!m.contains("role") || !m["role"].is_string())
        bad(fmt::format("messages[{}].role must be a string", i), "messages");
      std::string role = m["role"].get<std::string>();
      if (role == "developer") role = "system";
      if (role != "system" && role != "user" && role != "assistant")
        bad(fmt::format("messages[{}].role '{}' is not one of system, user, assistant", i, role),
            "messages");
      ChatMessage msg{role, message_content(m, i)};
      prompt_bytes += static_cast<int64_t>(msg.content.size());
      r.messages.push_back(std::move(msg));
    }
  } else {
    if (!body.contains("prompt")) bad("'prompt' is required", "prompt");
    const auto& p = body["prompt"];
    if (p.is_string()) {
      r.prompt = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      r.prompt = p[0].get<std::string>();
    } else {
      bad("'prompt' must be a string (or an array of one string)", "prompt");
    }
    if (r.prompt.empty()) bad("'prompt' must not be empty", "prompt");
    prompt_bytes = static_cast<int64_t>(r.prompt.size());
  }
  if (prompt_bytes > limits.max_prompt_bytes)
    throw ApiError(413, "invalid_request_error", "prompt_too_large",
                   fmt::format("the prompt has {} bytes; this server takes at most {}",
                               prompt_bytes, limits.max_prompt_bytes));

  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (!body.contains(key) || body[key].is_null()) continue;
    const int64_t n = get_integer(body, key);
    if (n < 0) bad(fmt::format("'{}' must be >= 0, found {}", key, n), key);
    if (n > limits.max_tokens_limit)
      bad(fmt::format("'{}' is {}; this server generates at most {}", key, n,
                      limits.max_tokens_limit),
          key);
    r.max_tokens = n;
  }
  if (body.contains("temperature") && !body["temperature"].is_null()) {
    const double t = get_number(body, "temperature");
    if (t < 0 || t > 100)
      bad(fmt::format("'temperature' must be in [0, 100], found {}", t), "temperature");
    r.sampling.temperature = static_cast<float>(t);
  }
  if (body.contains("top_p") && !body["top_p"].is_null()) {
    const double p = get_number(body, "top_p");
    if (!(p > 0 && p <= 1)) bad(fmt::format("'top_p' must be in (0, 1], found {}", p), "top_p");
    r.sampling.top_p = static_cast<float>(p);
  }
  if (body.contains("top_k") && !body["top_k"].is_null()) {
    const int64_t k = get_integer(body, "top_k");
    if (k < 0 || k > INT32_MAX) bad(fmt::format("'top_k' must be >= 0, found {}", k), "top_k");
    r.sampling.top_k = static_cast<int>(k);
  }
  if (body.contains("seed") && !body["seed"].is_null())
    r.sampling.seed = static_cast<uint64_t>(get_integer(body, "seed"));
  if (body.contains("stop") && !body["stop"].is_null()) {
    const auto& s = body["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      for (const auto& x : s) {
        if (!x.is_string()) bad("'stop' must be a string or an array of strings", "stop");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("'stop' must be a string or an array of strings", "stop");
    }
    if (r.stop.size() > limits.max_stop)
      bad(fmt::format("'stop' has {} strings; at most {}", r.stop.size(), limits.max_stop), "stop");
    for (const auto& x : r.stop)
      if (x.empty()) bad("'stop' strings must not be empty", "stop");
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) bad("'stream' must be a boolean", "stream");
    r.stream = body["stream"].get<bool>();
  }
  if (body.contains("n") && !body["n"].is_null()) {
    if (get_integer(body, "n") != 1) bad("only 'n' = 1 is supported", "n");
  }
  if (!conversation_header.empty()) {
    r.conversation_id = std::string(conversation_header);
  } else if (body.contains("conversation_id") && !body["conversation_id"].is_null()) {
    r.conversation_id = get_string(body, "conversation_id");
  }
  if (r.conversation_id.size() > 256)
    bad("the conversation id is longer than 256 bytes", "conversation_id");
  return r;
}

FeedPlan plan_feed(const std::vector<TokenId>& have, const std::vector<TokenId>& want) {
  if (!have.empty() && have.size() < want.size() &&
      std::equal(have.begin(), have.end(), want.begin()))
    return {false, have.size()};
  return {true, 0};
}

size_t incomplete_utf8_tail(std::string_view s) {
  // Look back at most 3 bytes for the lead byte of a sequence that is not complete.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const auto c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking
    size_t len = 1;
    if ((c & 0xE0) == 0xC0)
      len = 2;
    else if ((c & 0xF0) == 0xE0)
      len = 3;
    else if ((c & 0xF8) == 0xF0)
      len = 4;
    return len > back ? back : 0;
  }
  return 0;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const auto& s : stops_) longest_ = std::max(longest_, s.size());
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
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t k = std::min(s.size() - 1, text_.size() - sent_); k > hold; --k) {
      if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  size_t end = text_.size() - hold;
  end -= incomplete_utf8_tail(std::string_view(text_).substr(0, end).substr(sent_));
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

}  // namespace spillway::serve
