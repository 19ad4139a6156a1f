// libFuzzer target for the chat templates (session/chat.h, session/generate.h): the input
// is "TEMPLATE\0SYSTEM\0R CONTENT\0R CONTENT..." where R's low bits pick a role (system,
// user, assistant, or one the templates do not know). apply_chat_template and ChatFormat
// must return or throw spillway::Error. Where both accept the template, a conversation of
// user and assistant turns built from the contents must come out the same from the
// per-message pieces as from the whole-conversation formatter (the property the chat
// session relies on to encode turn by turn), with Llama 2's answers after its space.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/session/chat.h"
#include "spillway/session/generate.h"

namespace {

std::vector<std::string_view> split(std::string_view in) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    const size_t nul = in.find('\0', start);
    out.push_back(in.substr(start, nul == std::string_view::npos ? nul : nul - start));
    if (nul == std::string_view::npos) return out;
    start = nul + 1;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spillway;
  const std::vector<std::string_view> parts =
      split(std::string_view(reinterpret_cast<const char*>(data), size));
  const std::string tmpl(parts[0]);
  const std::string system(parts.size() > 1 ? parts[1] : std::string_view{});
  static const char* kRoles[] = {"system", "user", "assistant", "tool"};
  std::vector<ChatMessage> any;
  std::vector<std::string> contents;
  for (size_t i = 2; i < parts.size(); ++i) {
    const std::string_view p = parts[i];
    const int role = p.empty() ? 1 : static_cast<unsigned char>(p[0]) & 3;
    const std::string content(p.empty() ? p : p.substr(1));
    any.push_back({kRoles[role], content});
    contents.push_back(content);
  }
  // Any messages, any roles: a string or a spillway::Error.
  try {
    (void)apply_chat_template(tmpl, any, true);
    (void)apply_chat_template(tmpl, any, false);
  } catch (const Error&) {
  }
  try {
    const ChatFormat f(tmpl, system);
    // Alternating turns from the contents: user, assistant, user, ... ending on a user.
    std::vector<ChatMessage> msgs;
    if (!system.empty()) msgs.push_back({"system", system});
    std::string pieces = f.start();
    const size_t n_users = (contents.size() + 2) / 2;
    for (size_t i = 0; i < n_users; ++i) {
      const std::string user = 2 * i < contents.size() ? contents[2 * i] : "";
      msgs.push_back({"user", user});
      pieces += f.user(user, i == 0) + f.assistant_header();
      if (2 * i + 1 < contents.size() && i + 1 < n_users) {
        std::string answer = contents[2 * i + 1];
        msgs.push_back({"assistant", answer});
        if (f.family() == "llama2") answer = " " + answer;
        pieces += answer + f.assistant_end();
      }
    }
    if (pieces != apply_chat_template(tmpl, msgs, true)) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
