// ChatFormat: the per-message pieces of each template family concatenate to what
// apply_chat_template gives for the whole conversation; errors for no or unknown templates.
#include <gtest/gtest.h>

#include "spillway/core/error.h"
#include "spillway/session/chat.h"

namespace spillway {
namespace {

// Short stand-ins with each family's markers (the recognizer looks for these).
const char* kChatMl =
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are kind.<|im_end|>\n' "
    "}}{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
const char* kLlama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}";
const char* kZephyr = "{{ '<|user|>\n' + message['content'] + eos_token }}";
const char* kLlama2 = "{{ '[INST] ' + message['content'] + ' [/INST]' }}";

std::string incremental(const ChatFormat& f, const std::vector<std::string>& users,
                        const std::vector<std::string>& answers) {
  std::string s = f.start();
  for (size_t i = 0; i < users.size(); ++i) {
    s += f.user(users[i], i == 0) + f.assistant_header();
    if (i < answers.size()) s += answers[i] + f.assistant_end();
  }
  return s;
}

TEST(ChatFormat, PiecesConcatenateToTheWholeTemplate) {
  const std::vector<std::string> users = {"Hi there", "And then?", "Bye"};
  const std::vector<std::string> answers = {"Hello!", "Then nothing."};
  for (const char* tmpl : {kChatMl, kLlama3, kZephyr, kLlama2}) {
    for (const std::string system : {"", "Be brief."}) {
      std::vector<ChatMessage> msgs;
      if (!system.empty()) msgs.push_back({"system", system});
      for (size_t i = 0; i < users.size(); ++i) {
        msgs.push_back({"user", users[i]});
        if (i < answers.size()) msgs.push_back({"assistant", answers[i]});
      }
      const ChatFormat f(tmpl, system);
      // Llama 2's answers begin with the space the model writes after [/INST].
      std::vector<std::string> a = answers;
      if (f.family() == "llama2")
        for (auto& x : a) x = " " + x;
      EXPECT_EQ(incremental(f, users, a), apply_chat_template(tmpl, msgs))
          << f.family() << " system '" << system << "'";
    }
  }
  EXPECT_EQ(ChatFormat(kChatMl).start(), "<|im_start|>system\nYou are kind.<|im_end|>\n");
  EXPECT_EQ(ChatFormat(kChatMl, "Be brief.").start(), "<|im_start|>system\nBe brief.<|im_end|>\n");
  EXPECT_EQ(ChatFormat(kChatMl).assistant_end(), "<|im_end|>\n");
  EXPECT_EQ(ChatFormat(kLlama2, "S").user_prefix(false), "[INST] ");
}

// A ChatML template whose default system message is empty still writes the system
// block; the pieces must too (found by the chat_template fuzzer).
TEST(ChatFormat, AnEmptyDefaultSystemMessageIsStillABlock) {
  const std::string tmpl =
      "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n<|im_end|>\n' }}"
      "{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
      "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
  const ChatFormat f(tmpl);
  EXPECT_EQ(f.start(), "<|im_start|>system\n<|im_end|>\n");
  EXPECT_EQ(f.start() + f.user("Hi", true) + f.assistant_header(),
            apply_chat_template(tmpl, {{"user", "Hi"}}));
  // A template without a default: no block.
  EXPECT_EQ(ChatFormat("<|im_start|>").start(), "");
}

TEST(ChatFormat, NoOrUnknownTemplate) {
  EXPECT_THROW(ChatFormat(""), FormatError);
  EXPECT_THROW(ChatFormat("{{ message['content'] }}"), UnsupportedError);
}

}  // namespace
}  // namespace spillway
