// Chat on the default model: a 200-turn scripted conversation through `spillway chat
// --script` under sink:4+252 stays within 256 cache tokens and answers exactly as a plain
// Session fed the same token stream (the template's text per turn, greedy answers, the end
// of turn); Chat under sink:4+252,evict=turn keeps whole messages only and equals a plain
// Session given the same turn marks; a base model without template is refused.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/session/chat.h"
#include "util/paths.h"

namespace spillway {
namespace {

std::string user_line(int i) {
  static const char* kAsk[] = {
      "What is {}?",          "Name an animal with {} legs.", "Is {} an even number?",
      "Say {} in French.",    "Tell me a fact about {}.",     "Count to {}.",
      "What comes after {}?", "Write a word with {} letters."};
  std::string s = kAsk[i % 8];
  return s.replace(s.find("{}"), 2, std::to_string(i % 13 + 1));
}

// A plain Session fed what a ChatML conversation is, turn by turn: tokens of the
// template's text (special tokens parsed), greedy answers of at most n tokens stopped at
// end of generation, and "<|im_end|>\n" after each.
struct Reference {
  Reference(const model::Model& m, const kv::PolicySpec& policy) : m_(m) {
    SessionOptions so;
    so.policy = kv::PolicySpec(policy);
    so.threads = 2;
    s_ = std::make_unique<Session>(m, so);
    tmpl_ = *m.chat_template();
  }
  std::vector<TokenId> encode(const std::string& text) const {
    EncodeOptions o;
    o.parse_special = true;
    o.add_bos = false;
    return m_.tokenizer().encode(text, o);
  }
  // Marks: where the user message and the assistant's turn begin (for evict=turn).
  std::string turn(const std::string& user, int64_t n, bool marks) {
    std::string text;
    if (first_) {
      // The default system message comes from the template, as apply_chat_template writes it.
      const std::string whole = apply_chat_template(tmpl_, {{"user", user}});
      text = whole.substr(0, whole.find("<|im_start|>user"));
      first_ = false;
    }
    std::vector<TokenId> start = encode(text);
    std::vector<TokenId> u = encode("<|im_start|>user\n" + user + "<|im_end|>\n");
    std::vector<TokenId> h = encode("<|im_start|>assistant\n");
    if (marks) {
      s_->mark_turn_start(s_->n_past() + static_cast<int64_t>(start.size()));
      s_->mark_turn_start(s_->n_past() + static_cast<int64_t>(start.size() + u.size()));
    }
    std::vector<TokenId> all = start;
    all.insert(all.end(), u.begin(), u.end());
    all.insert(all.end(), h.begin(), h.end());
    s_->feed(all);
    std::vector<TokenId> answer;
    const int64_t n_vocab = m_.config().n_vocab;
    for (int64_t i = 0; i < n; ++i) {
      const float* l = s_->last_logits();
      const auto next = static_cast<TokenId>(std::max_element(l, l + n_vocab) - l);
      if (m_.tokenizer().is_eog(next)) break;
      answer.push_back(next);
      s_->feed(std::span<const TokenId>(&next, 1));
    }
    s_->feed(encode("<|im_end|>\n"));
    max_held_ = std::max(max_held_, held());
    return m_.tokenizer().decode(answer);
  }
  // Tokens the latest token attended to.
  int64_t held() const {
    const kv::BatchPlan& p = s_->cache().step().groups[0];
    return p.span_size(p.tokens.size() - 1);
  }

  const model::Model& m_;
  std::unique_ptr<Session> s_;
  std::string tmpl_;
  bool first_ = true;
  int64_t max_held_ = 0;
};

TEST(ChatModel, TwoHundredScriptedTurnsThroughTheCliEqualAPlainSession) {
  SPILLWAY_REQUIRE_FILE(test::default_model_path());
  const std::string bin = std::string(SPILLWAY_BINARY_DIR) + "/bin/spillway";
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "no " << bin << " (build spillway_cli)";
  const auto dir = std::filesystem::temp_directory_path() / "spillway_chat_model_test";
  std::filesystem::create_directories(dir);
  const std::string script = (dir / "script.txt").string(), out = (dir / "out.json").string();
  {
    std::ofstream f(script);
    for (int i = 0; i < 200; ++i) {
      if (i % 3 == 2)
        f << nlohmann::json{{"user", user_line(i)}}.dump() << "\n";
      else
        f << user_line(i) << "\n";
    }
  }
  const std::string cmd = "'" + bin + "' chat --model '" + test::default_model_path() +
                          "' --policy sink:4+252 -n 16 -t 2 --script '" + script + "' --json '" +
                          out + "' > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  nlohmann::json j;
  std::ifstream(out) >> j;
  ASSERT_EQ(j["turns"].size(), 200u);
  EXPECT_EQ(j["policy"], "sink:4+252");

  auto m = model::Model::load(test::default_model_path());
  Reference ref(*m, kv::PolicySpec("sink:4+252"));
  int64_t max_cache = 0;
  for (int i = 0; i < 200; ++i) {
    const auto& t = j["turns"][static_cast<size_t>(i)];
    ASSERT_EQ(t["user"], user_line(i));
    max_cache = std::max<int64_t>(max_cache, t["cache_tokens"].get<int64_t>());
    EXPECT_LE(t["cache_tokens"].get<int64_t>(), 256) << "turn " << i;
    const std::string answer = ref.turn(user_line(i), 16, false);
    ASSERT_EQ(t["answer"].get<std::string>(), answer) << "turn " << i;
    ASSERT_EQ(t["stream_tokens"].get<int64_t>(), ref.s_->n_past()) << "turn " << i;
  }
  EXPECT_EQ(max_cache, 256);
  EXPECT_EQ(ref.max_held_, 256);
  EXPECT_GT(j["turns"][199]["evicted"].get<int64_t>(), 4000);
}

TEST(ChatModel, EvictByTurnKeepsWholeMessagesAndEqualsAPlainSession) {
  SPILLWAY_REQUIRE_FILE(test::default_model_path());
  auto m = model::Model::load(test::default_model_path());
  const kv::PolicySpec policy("sink:4+252,evict=turn");
  SessionOptions so;
  so.policy = kv::PolicySpec(policy);
  so.threads = 2;
  Session s(*m, so);
  ChatOptions co;
  co.generate.max_new_tokens = 16;
  Chat chat(s, co);
  auto greedy = make_sampler({});
  Reference ref(*m, policy);
  for (int i = 0; i < 40; ++i) {
    const ChatReply r = chat.send(user_line(i), *greedy);
    EXPECT_EQ(r.answer.text, ref.turn(user_line(i), 16, true)) << "turn " << i;
    const ChatStats st = chat.stats();
    EXPECT_LE(st.held, 256);
    EXPECT_EQ(st.messages_partial, 0) << "turn " << i;
    EXPECT_EQ(st.held, ref.held());
    EXPECT_EQ(st.tokens, ref.s_->n_past());
  }
  const ChatStats st = chat.stats();
  EXPECT_GT(st.evicted, 500);
  EXPECT_EQ(st.messages, 81);  // the system message, then a user and an assistant per turn
  // The sinks are the system turn, whole.
  EXPECT_EQ(s.policy().n_sinks(), chat.message_starts()[1]);
  EXPECT_GT(s.policy().n_sinks(), 4);
  // reset: a fresh stream.
  chat.reset();
  EXPECT_EQ(s.n_past(), 0);
  EXPECT_EQ(chat.stats().messages, 0);
}

TEST(ChatModel, ABaseModelWithoutTemplateIsRefused) {
  SPILLWAY_REQUIRE_FILE(test::gemma3_model_path());
  auto m = model::Model::load(test::gemma3_model_path());
  ASSERT_FALSE(m->chat_template());
  SessionOptions so;
  so.policy = kv::PolicySpec("sink:4+252");
  Session s(*m, so);
  EXPECT_THROW(Chat(s, ChatOptions{}), FormatError);
}

}  // namespace
}  // namespace spillway
