// The OpenAI side of `spillway serve` (tools/spillway/serve/api.h): request parsing and
// the JSON shapes of responses.
#include <gtest/gtest.h>

#include "serve/api.h"

namespace spillway::serve {
namespace {

RequestLimits limits() {
  RequestLimits l;
  l.model_names = {"SmolLM2", "spillway"};
  l.max_prompt_bytes = 100;
  l.max_tokens_limit = 1000;
  l.default_max_tokens = 16;
  return l;
}

int status_of(std::string_view body, Endpoint ep = Endpoint::Chat) {
  try {
    parse_request(body, ep, limits());
  } catch (const ApiError& e) {
    return e.status();
  }
  return 200;
}

TEST(ServeApi, ParsesAChatRequest) {
  const auto r = parse_request(
      R"({"model":"spillway","messages":[{"role":"system","content":"Be brief."},
          {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"!"}]}],
          "max_tokens":5,"temperature":0.5,"top_p":0.9,"top_k":40,"seed":7,"stop":["\n\n","END"],
          "ignore_eos":true,"stream":true,"conversation_id":"c1"})",
      Endpoint::Chat, limits());
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi!");
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_EQ(r.sampling.seed, 7u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_TRUE(r.ignore_eos);
  EXPECT_TRUE(r.stream);
  EXPECT_EQ(r.conversation_id, "c1");
}

TEST(ServeApi, DefaultsAndHeaderConversationId) {
  const auto r = parse_request(R"({"prompt":"Once","stop":"x","conversation_id":"body"})",
                               Endpoint::Completion, limits(), "header");
  EXPECT_EQ(r.prompt, "Once");
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  EXPECT_FALSE(r.ignore_eos);
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(r.conversation_id, "header");
}

TEST(ServeApi, RejectsBadRequests) {
  EXPECT_EQ(status_of("{not json"), 400);
  // A number past a double's range is a JSON error too, not an escaping exception (found
  // by the http_request fuzzer).
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"top_k":1e999})"), 400);
  EXPECT_EQ(status_of("111e1111"), 400);
  EXPECT_EQ(status_of("[1,2]"), 400);
  EXPECT_EQ(status_of(R"({"messages":[]})"), 400);
  EXPECT_EQ(status_of(R"({"messages":"hi"})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"wizard","content":"x"}]})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":-1})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":1001})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":"5"})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":1e300})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"temperature":-1})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"top_p":0})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"stop":[""]})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})"), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"ignore_eos":1})"), 400);
  EXPECT_EQ(status_of(R"({"model":"gpt-4","messages":[{"role":"user","content":"x"}]})"), 404);
  EXPECT_EQ(
      status_of(R"({"messages":[{"role":"user","content":")" + std::string(101, 'a') + R"("}]})"),
      413);
  EXPECT_EQ(status_of(R"({"prompt":""})", Endpoint::Completion), 400);
  EXPECT_EQ(status_of(R"({"prompt":[1,2,3]})", Endpoint::Completion), 400);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}]})"), 200);
  EXPECT_EQ(status_of(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})"), 200);
}

TEST(ServeApi, ErrorShapeAndInvalidUtf8) {
  const auto j = error_json("bad", "invalid_request_error", "x");
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["code"], "x");
  EXPECT_NO_THROW(dump_json(nlohmann::json{{"text", std::string("\xff")}}));
}

}  // namespace
}  // namespace spillway::serve
