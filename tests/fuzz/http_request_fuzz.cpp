// libFuzzer target for the server's request parsing (tools/spillway/serve/api.h): the input
// is "E HEADER\nBODY": E selects the endpoint (bit 0: chat or completion), HEADER is the
// X-Conversation-Id header's value. parse_request must return a request within the limits
// or throw ApiError (an HTTP status in 400..499); anything else is a finding. A request
// that parses is answered in every shape the server sends (whole, streamed chunks, usage),
// each dumped as JSON text, which must never throw, whatever bytes the request held.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "serve/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spillway;
  using namespace spillway::serve;
  if (size < 1) return 0;
  const Endpoint endpoint = (data[0] & 1) ? Endpoint::Completion : Endpoint::Chat;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t nl = rest.find('\n');
  const std::string_view header = nl == std::string_view::npos ? "" : rest.substr(0, nl);
  const std::string_view body = nl == std::string_view::npos ? rest : rest.substr(nl + 1);
  RequestLimits limits;
  limits.model_names = {"spillway", "smollm2"};
  limits.max_prompt_bytes = 4096;
  limits.max_tokens_limit = 512;
  CompletionRequest r;
  try {
    r = parse_request(body, endpoint, limits, header);
  } catch (const ApiError& e) {
    if (e.status() < 400 || e.status() > 499) __builtin_trap();
    return 0;
  }
  if (r.endpoint != endpoint) __builtin_trap();
  if (r.max_tokens < 0 || r.max_tokens > limits.max_tokens_limit) __builtin_trap();
  if (r.stop.size() > limits.max_stop) __builtin_trap();
  for (const std::string& s : r.stop)
    if (s.empty()) __builtin_trap();
  int64_t prompt_bytes = static_cast<int64_t>(r.prompt.size());
  for (const ChatMessage& m : r.messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") __builtin_trap();
    prompt_bytes += static_cast<int64_t>(m.content.size());
  }
  if (prompt_bytes > limits.max_prompt_bytes) __builtin_trap();
  if (!header.empty() && r.conversation_id != header) __builtin_trap();
  // The answers echo what the request sent (model name, text): invalid UTF-8 included.
  const ResponseHead head{"id-" + r.conversation_id, 1, r.model, r.endpoint};
  const std::string text = r.messages.empty() ? r.prompt : r.messages.back().content;
  Usage usage;
  usage.prompt_tokens = prompt_bytes;
  usage.completion_tokens = r.max_tokens;
  for (const StopReason stop : {StopReason::kLength, StopReason::kStopString}) {
    (void)dump_json(completion_json(head, text, stop, usage));
    (void)dump_json(last_chunk_json(head, stop, usage));
  }
  (void)dump_json(role_chunk_json(head));
  (void)dump_json(text_chunk_json(head, text));
  (void)dump_json(error_json(text, "invalid_request_error", r.model));
  return 0;
}
