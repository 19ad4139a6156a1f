// The server's conversation endpoints without HTTP (serve/api.h): policies a client may ask
// for, the ids the server gives out, and the JSON of the cache view for every policy
// family, built from a real scheduler's views.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "serve/api.h"
#include "spillway/model/model.h"
#include "spillway/serve/scheduler.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway::serve {
namespace {

using nlohmann::json;

const model::Model& tiny() {
  static const auto m = [] {
    test::TinyModelSpec spec;
    spec.tied_output = false;
    return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "serve_view.gguf"));
  }();
  return *m;
}

int status_of(const std::function<void()>& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const ApiError& e) {
    if (message) *message = e.what();
    return e.code() == "invalid_policy" ? e.status() : -e.status();
  }
  return 0;
}

TEST(ServeConversations, ClientPoliciesAreCheckedAndBounded) {
  RequestLimits limits;
  limits.max_cache = 2048;
  EXPECT_EQ(parse_client_policy("sink:4+1020", limits).str(), "sink:4+1020");
  EXPECT_EQ(parse_client_policy("h2o:64+192", limits).str(), "h2o:64+192");
  EXPECT_EQ(parse_client_policy("recompute:256", limits).str(), "recompute:256");
  std::string msg;
  EXPECT_EQ(status_of([&] { parse_client_policy("full", limits); }, &msg), 400);
  EXPECT_NE(msg.find("--max-cache"), std::string::npos) << msg;
  EXPECT_EQ(status_of([&] { parse_client_policy("sink:4+4096", limits); }, &msg), 400);
  EXPECT_NE(msg.find("4100 tokens"), std::string::npos) << msg;
  // Refused from its counts, before a policy that allocates per slot is made.
  EXPECT_EQ(status_of([&] { parse_client_policy("tova:16777216", limits); }, &msg), 400);
  EXPECT_NE(msg.find("16777216 tokens"), std::string::npos) << msg;
  EXPECT_EQ(status_of([&] { parse_client_policy("h2o:2000+100", limits); }, &msg), 400);
  EXPECT_NE(msg.find("2100 tokens"), std::string::npos) << msg;
  EXPECT_EQ(parse_client_policy("h2o:1000+1000", limits).str(), "h2o:1000+1000");
  EXPECT_EQ(status_of([&] { parse_client_policy("sink:x", limits); }, &msg), 400);
  EXPECT_NE(msg.find("valid forms"), std::string::npos) << msg;
  // fit= would read a file on the server: refused before the spec is parsed, so the
  // message is the refusal, not what reading the file said.
  for (const char* spec :
       {"nullsink:64,fit=/nonexistent/x.sinks", "nullsink:64, fit =/etc/passwd"}) {
    EXPECT_EQ(status_of([&] { parse_client_policy(spec, limits); }, &msg), 400) << spec;
    EXPECT_NE(msg.find("not accepted from clients"), std::string::npos) << msg;
  }
  // The completion request's "policy" field goes through the same check.
  RequestLimits rl = limits;
  auto r = parse_request(R"({"prompt": "hi", "policy": "window:64"})", Endpoint::Completion, rl);
  ASSERT_TRUE(r.policy.has_value());
  EXPECT_EQ(r.policy->str(), "window:64");
  EXPECT_EQ(status_of([&] {
              parse_request(R"({"prompt": "hi", "policy": "full"})", Endpoint::Completion, rl);
            }),
            400);
  EXPECT_FALSE(parse_conversation_request("", rl).has_value());
  EXPECT_FALSE(parse_conversation_request("{}", rl).has_value());
  EXPECT_EQ(parse_conversation_request(R"({"policy": "tova:256"})", rl)->str(), "tova:256");
  EXPECT_EQ(status_of([&] { parse_conversation_request("[1]", rl); }), -400);
  EXPECT_EQ(status_of([&] { parse_conversation_request(R"({"policy": 5})", rl); }), 400);
}

TEST(ServeConversations, IdsAre128RandomBits) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = random_conversation_id();
    ASSERT_EQ(id.size(), 5u + 32u) << id;
    EXPECT_EQ(id.substr(0, 5), "conv-");
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef", 5), std::string::npos) << id;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 1000u);
  // Each of the 128 bits varies (a counter or a narrow generator would leave some fixed).
  std::vector<int> ones(128, 0);
  for (const auto& id : ids)
    for (int b = 0; b < 128; ++b) {
      const int nibble = std::stoi(id.substr(5 + b / 4, 1), nullptr, 16);
      ones[static_cast<size_t>(b)] += (nibble >> (3 - b % 4)) & 1;
    }
  for (int b = 0; b < 128; ++b) {
    EXPECT_GT(ones[static_cast<size_t>(b)], 400) << "bit " << b;
    EXPECT_LT(ones[static_cast<size_t>(b)], 600) << "bit " << b;
  }
}

// The view's JSON for every policy family: its shape, and counts that add up.
TEST(ServeConversations, CacheViewJsonForEveryPolicyFamily) {
  SchedulerOptions so;
  so.threads = 1;
  so.prefill_chunk = 8;
  Scheduler sched(tiny(), so);
  const std::vector<TokenId> prompt = test::random_tokens(70, 3);
  for (const char* spec : {"full", "window:24", "sink:4+24", "sink:2+16,evict=turn", "recompute:16",
                           "h2o:8+16", "tova:24", "detected:4+16", "nullsink:24"}) {
    SCOPED_TRACE(spec);
    const std::string id = std::string("view-") + spec;
    ASSERT_EQ(sched.watch(id, 0, std::chrono::milliseconds(0)), nullptr);
    JobSpec open;
    open.open_only = true;
    open.conversation_id = id;
    open.policy = kv::PolicySpec(spec);
    auto jo = sched.submit(std::move(open));
    while (auto e = jo->next(std::chrono::seconds(30)))
      if (e->kind == Event::Kind::Done || e->kind == Event::Kind::Error) break;
    ASSERT_NE(sched.watch(id, 0, std::chrono::milliseconds(0)), nullptr);
    JobSpec j;
    j.prompt = prompt;
    j.conversation_id = id;
    j.max_tokens = 6;
    auto job = sched.submit(std::move(j));
    while (auto e = job->next(std::chrono::seconds(30)))
      if (e->kind == Event::Kind::Done || e->kind == Event::Kind::Error) break;
    auto v = sched.watch(id, 0, std::chrono::milliseconds(0));
    for (int i = 0; i < 100 && v && (v->busy || v->layout.n_past != 75); ++i)
      v = sched.watch(id, v->version, std::chrono::milliseconds(50));
    ASSERT_NE(v, nullptr);
    const json j2 = cache_view_json(*v, tiny().tokenizer());
    EXPECT_EQ(j2["object"], "conversation.cache");
    EXPECT_EQ(j2["id"], id);
    EXPECT_EQ(j2["policy"], spec);
    EXPECT_EQ(j2["n_past"], 75);
    const json& c = j2["counts"];
    EXPECT_EQ(c["sink"].get<int64_t>() + c["window"].get<int64_t>() + c["kept"].get<int64_t>() +
                  c["evicted"].get<int64_t>(),
              75);
    ASSERT_EQ(j2["tokens"].size(), 75u);
    int64_t held = 0;
    for (size_t i = 0; i < 75; ++i) {
      const json& t = j2["tokens"][i];
      EXPECT_EQ(t["i"], static_cast<int64_t>(i));
      ASSERT_TRUE(t["text"].is_string());
      if (i < prompt.size()) {
        EXPECT_EQ(t["id"], prompt[i]);
      }
      const std::string state = t["state"];
      EXPECT_TRUE(state == "sink" || state == "window" || state == "kept" || state == "evicted");
      EXPECT_EQ(t.contains("slot"), state != "evicted");
      EXPECT_EQ(t.contains("key_pos"), state != "evicted");
      held += state != "evicted";
    }
    if (std::string(spec) == "full") {
      EXPECT_TRUE(j2["capacity"].is_null());
    } else {
      EXPECT_LE(held, j2["capacity"].get<int64_t>());
    }
    EXPECT_GT(j2["kv_bytes"].get<uint64_t>(), 0u);
    // Watched from the start: the last decoded token's attention, per layer and head.
    const json& a = j2["attention"];
    ASSERT_TRUE(a.is_object());
    EXPECT_EQ(a["stream_index"], 74);
    ASSERT_EQ(a["sink_mass"].size(), static_cast<size_t>(tiny().config().n_layer));
    ASSERT_EQ(a["sink_mass"][0].size(), static_cast<size_t>(tiny().config().n_head));
    for (const char* key : {"sink_mass", "first_mass", "recent_mass"})
      for (const auto& row : a[key])
        for (const auto& x : row) {
          EXPECT_GE(x.get<double>(), 0.0);
          EXPECT_LE(x.get<double>(), 1.0 + 1e-6);
        }
    const bool has_sinks = std::string(spec).rfind("sink:", 0) == 0;
    EXPECT_EQ(c["sink"].get<int64_t>() > 0, has_sinks || std::string(spec) == "detected:4+16");
  }
}

}  // namespace
}  // namespace spillway::serve
