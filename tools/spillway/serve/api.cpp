#include "api.h"

#include <fmt/core.h>
#include <sys/random.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>

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
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number too large for a double ("1e999").
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
  if (body.contains("ignore_eos") && !body["ignore_eos"].is_null()) {
    if (!body["ignore_eos"].is_boolean()) bad("'ignore_eos' must be a boolean", "ignore_eos");
    r.ignore_eos = body["ignore_eos"].get<bool>();
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
  if (body.contains("policy") && !body["policy"].is_null())
    r.policy = parse_client_policy(get_string(body, "policy"), limits);
  return r;
}

kv::PolicySpec parse_client_policy(std::string_view text, const RequestLimits& limits) {
  auto refuse = [](const std::string& message) {
    throw ApiError(400, "invalid_request_error", "invalid_policy", message);
  };
  // Checked on the text, before the spec is parsed: parsing fit= reads the file.
  for (size_t at = text.find(','); at != std::string_view::npos; at = text.find(',', at + 1)) {
    std::string_view option = text.substr(at + 1);
    option = option.substr(0, option.find(','));
    while (!option.empty() && std::isspace(static_cast<unsigned char>(option.front())))
      option.remove_prefix(1);
    std::string_view key = option.substr(0, option.find('='));
    while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back())))
      key.remove_suffix(1);
    if (key == "fit")
      refuse(
          fmt::format("policy '{}': fit= reads a file on the server and is not accepted from "
                      "clients (start the server with --policy instead)",
                      text));
  }
  std::optional<kv::PolicySpec> spec;
  try {
    spec.emplace(text);
  } catch (const spillway::Error& e) {
    refuse(e.what());
  }
  // Every kind's cache is the sum of the counts in its arguments (S+W, H+W, C, W): refuse
  // a large one before making the policy, since some kinds allocate per slot when made.
  int64_t counted = 0;
  for (size_t i = 0; i < spec->args().size();) {
    if (!std::isdigit(static_cast<unsigned char>(spec->args()[i]))) {
      ++i;
      continue;
    }
    int64_t v = 0;
    while (i < spec->args().size() && std::isdigit(static_cast<unsigned char>(spec->args()[i]))) {
      v = std::min<int64_t>(v * 10 + (spec->args()[i] - '0'), int64_t{1} << 40);
      ++i;
    }
    counted = std::min<int64_t>(counted + v, int64_t{1} << 40);
  }
  if (counted > limits.max_cache)
    refuse(
        fmt::format("policy '{}': its cache holds {} tokens, over this server's limit of {} "
                    "tokens (--max-cache)",
                    spec->str(), counted, limits.max_cache));
  std::optional<int64_t> cap;
  try {
    cap = kv::make_policy(*spec)->capacity();
  } catch (const spillway::Error& e) {
    refuse(e.what());
  }
  if (!cap || *cap > limits.max_cache)
    refuse(fmt::format("policy '{}': its cache {} this server's limit of {} tokens (--max-cache)",
                       spec->str(),
                       cap ? fmt::format("holds {} tokens, over", *cap) : std::string("grows past"),
                       limits.max_cache));
  return *spec;
}

std::string random_conversation_id() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("getrandom: {}", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  std::string id = "conv-";
  for (unsigned char b : bytes) id += fmt::format("{:02x}", b);
  return id;
}

std::optional<kv::PolicySpec> parse_conversation_request(std::string_view body,
                                                         const RequestLimits& limits) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return std::nullopt;
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw ApiError(400, "invalid_request_error", "invalid_json",
                   "the body must be a JSON object ({\"policy\": SPEC} or {})");
  if (!j.contains("policy") || j["policy"].is_null()) return std::nullopt;
  if (!j["policy"].is_string())
    throw ApiError(400, "invalid_request_error", "invalid_policy", "'policy' must be a string");
  return parse_client_policy(j["policy"].get<std::string>(), limits);
}

json cache_view_json(const ConversationView& v, const Tokenizer& tok) {
  json tokens = json::array();
  for (size_t i = 0; i < v.layout.tokens.size(); ++i) {
    const analysis::CachedToken& t = v.layout.tokens[i];
    const TokenId id = v.token_ids[i];
    json e = {{"i", t.index},
              {"id", id},
              {"text", id >= 0 && id < tok.vocab_size() ? tok.token_bytes(id) : std::string()},
              {"state", analysis::token_state_name(t.state)}};
    if (t.state != analysis::TokenState::kEvicted) {
      e["slot"] = t.slot;
      e["key_pos"] = t.key_pos;
      e["query_pos"] = t.query_pos;
    }
    tokens.push_back(std::move(e));
  }
  json attention = nullptr;
  const analysis::AttentionShares& a = v.attention;
  if (a.stream_index >= 0) {
    auto grid = [&](const std::vector<float>& x) {
      json rows = json::array();
      for (int64_t l = 0; l < a.n_layer; ++l) {
        json row = json::array();
        for (int64_t h = 0; h < a.n_head; ++h)
          row.push_back(std::round(x[static_cast<size_t>(l * a.n_head + h)] * 1e5) / 1e5);
        rows.push_back(std::move(row));
      }
      return rows;
    };
    attention = {{"stream_index", a.stream_index},
                 {"n_layer", a.n_layer},
                 {"n_head", a.n_head},
                 {"first", a.first},
                 {"recent", a.recent},
                 {"sink_mass", grid(a.sink)},
                 {"first_mass", grid(a.first_tokens)},
                 {"recent_mass", grid(a.newest)},
                 {"span", a.span}};
  }
  const analysis::CacheLayout& l = v.layout;
  return {
      {"object", "conversation.cache"},
      {"id", v.id},
      {"policy", v.policy},
      {"version", v.version},
      {"busy", v.busy},
      {"n_past", l.n_past},
      {"capacity", v.capacity ? json(*v.capacity) : json(nullptr)},
      {"counts",
       {{"sink", l.n_sink}, {"window", l.n_window}, {"kept", l.n_kept}, {"evicted", l.n_evicted}}},
      {"first_listed", l.first_listed},
      {"tokens", std::move(tokens)},
      {"kv_bytes", v.kv_bytes},
      {"attention", std::move(attention)}};
}

const char* finish_reason(StopReason r) {
  return r == StopReason::kLength ? "length" : "stop";
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {

bool is_chat(const ResponseHead& h) {
  return h.endpoint == Endpoint::Chat;
}

json object_json(const ResponseHead& h, const char* chat_object, const json& choice) {
  return {{"id", h.id},
          {"object", is_chat(h) ? chat_object : "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"choices", json::array({choice})}};
}

// A completion choice carries its text (and no log-probabilities); a chat choice carries
// `field` ("message" or "delta") instead.
json choice_json(const ResponseHead& h, const char* field, json content, const json& finish) {
  json choice = {{"index", 0}, {"finish_reason", finish}};
  if (is_chat(h)) {
    choice[field] = std::move(content);
  } else {
    choice["text"] = content.is_object() ? content.value("content", "") : std::string();
    choice["logprobs"] = nullptr;
  }
  return choice;
}

}  // namespace

json completion_json(const ResponseHead& h, const std::string& text, StopReason stop,
                     const Usage& usage) {
  json out = object_json(
      h, "chat.completion",
      choice_json(h, "message", {{"role", "assistant"}, {"content", text}}, finish_reason(stop)));
  out["usage"] = usage_json(usage);
  return out;
}

json role_chunk_json(const ResponseHead& h) {
  return object_json(h, "chat.completion.chunk",
                     choice_json(h, "delta", {{"role", "assistant"}, {"content", ""}}, nullptr));
}

json text_chunk_json(const ResponseHead& h, const std::string& text) {
  return object_json(h, "chat.completion.chunk",
                     choice_json(h, "delta", {{"content", text}}, nullptr));
}

json last_chunk_json(const ResponseHead& h, StopReason stop, const Usage& usage) {
  json out = object_json(h, "chat.completion.chunk",
                         choice_json(h, "delta", json::object(), finish_reason(stop)));
  out["usage"] = usage_json(usage);
  return out;
}

json models_json(const std::vector<std::string>& ids, int64_t created) {
  json data = json::array();
  for (const auto& id : ids)
    data.push_back(
        {{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "spillway"}});
  return {{"object", "list"}, {"data", data}};
}

json metrics_json(const SchedulerMetrics& m, const ServerCounters& c) {
  return {
      {"uptime_s", m.uptime_s},
      {"requests_total", c.requests},
      {"errors_total", c.errors},
      {"tokens_per_s", m.tokens_per_s},
      {"completion_tokens_total", m.completion_tokens},
      {"prompt_tokens_total", m.prompt_tokens},
      {"cached_prompt_tokens_total", m.cached_prompt_tokens},
      {"active_requests", m.active},
      {"queued_requests", m.queued},
      {"active_conversations", m.conversations},
      {"sessions", m.sessions},
      {"kv_bytes", m.kv_bytes},
      {"kv_budget_bytes", c.kv_budget},
      {"rss_bytes", c.rss_bytes},
      {"conversation_prefix_reuse_total", m.reuse_prefix},
      {"conversation_reset_total", m.reuse_reset},
      {"conversation_new_total", m.reuse_new},
      {"session_evictions_total", m.evictions},
      {"completed_total", m.jobs_completed},
      {"cancelled_total", m.jobs_cancelled},
      {"failed_total", m.jobs_failed},
      {"decode_steps_total", m.steps},
  };
}

std::string prometheus_text(const json& metrics) {
  std::string out;
  for (const auto& [k, v] : metrics.items()) out += fmt::format("spillway_{} {}\n", k, v.dump());
  return out;
}

ApiError event_error(const Event& e) {
  return e.unavailable ? ApiError(503, "server_error", "unavailable", e.text)
                       : ApiError(500, "server_error", "internal_error", e.text);
}

}  // namespace spillway::serve
