// The library's log (core/log.h): quiet by default, level and sink set through the API or
// SPILLWAY_LOG_LEVEL, the messages an operator needs (model loaded, session, a stream past
// the trained context) at their levels, and configuration changes safe while other
// threads log.
#include "spillway/core/log.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spillway/core/log_spdlog.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

struct Captured {
  LogLevel level;
  std::string text;
};

// Captures the log through a callback for the test's duration, then restores the
// defaults (with SPILLWAY_LOG_LEVEL unset, whatever the environment had).
class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* e = std::getenv("SPILLWAY_LOG_LEVEL")) saved_env_ = e;
    ::unsetenv("SPILLWAY_LOG_LEVEL");
    reset_log();
    set_log_callback([this](LogLevel l, std::string_view m) {
      std::lock_guard<std::mutex> lock(mutex_);
      messages_.push_back({l, std::string(m)});
    });
  }
  void TearDown() override {
    if (saved_env_) ::setenv("SPILLWAY_LOG_LEVEL", saved_env_->c_str(), 1);
    reset_log();
  }
  std::vector<Captured> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(messages_, {});
  }
  static std::vector<Captured> containing(const std::vector<Captured>& v, const std::string& s) {
    std::vector<Captured> out;
    for (const auto& c : v)
      if (c.text.find(s) != std::string::npos) out.push_back(c);
    return out;
  }
  std::unique_ptr<model::Model> tiny() {
    path_ = test::write_tiny_model(test::temp_dir(), {}, "log.gguf");  // n_ctx 512
    return model::Model::load(path_);
  }
  static SessionOptions opts(const std::string& spec) {
    SessionOptions o;
    o.policy = kv::PolicySpec(spec);
    o.threads = 1;
    o.max_batch = 16;
    return o;
  }

  std::mutex mutex_;
  std::vector<Captured> messages_;
  std::optional<std::string> saved_env_;
  std::string path_;
};

TEST_F(LogTest, LevelNamesRoundTrip) {
  for (LogLevel l : {LogLevel::kTrace, LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn,
                     LogLevel::kError, LogLevel::kCritical, LogLevel::kOff})
    EXPECT_EQ(parse_log_level(log_level_name(l)), l);
  EXPECT_EQ(parse_log_level("warning"), LogLevel::kWarn);
  EXPECT_EQ(parse_log_level("loud"), std::nullopt);
  EXPECT_EQ(parse_log_level("INFO"), std::nullopt);
}

TEST_F(LogTest, QuietByDefault) {
  EXPECT_EQ(log_level(), LogLevel::kWarn);
  auto m = tiny();
  Session s(*m, opts("sink:4+60"));
  s.feed(test::random_tokens(100, 1));
  EXPECT_TRUE(take().empty());  // loading, a session and a stream log nothing at warn
}

TEST_F(LogTest, ModelLoadedAtInfo) {
  set_log_level(LogLevel::kInfo);
  EXPECT_EQ(log_level(), LogLevel::kInfo);
  auto m = tiny();
  const auto got = containing(take(), "loaded ");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].level, LogLevel::kInfo);
  for (const std::string& part :
       {path_, std::string("llama"), std::string("2 layers"), std::string("vocab 262"),
        std::string("trained context 512"), std::string("Q4_1 x "), std::string("Q8_0 x ")})
    EXPECT_NE(got[0].text.find(part), std::string::npos) << part << " in: " << got[0].text;
}

TEST_F(LogTest, SessionAtDebugOnly) {
  set_log_level(LogLevel::kInfo);
  auto m = tiny();
  take();
  { Session s(*m, opts("sink:4+60")); }
  EXPECT_TRUE(containing(take(), "session:").empty());
  set_log_level(LogLevel::kDebug);
  { Session s(*m, opts("sink:4+60,kv=f16")); }
  const auto got = containing(take(), "session:");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].level, LogLevel::kDebug);
  for (const std::string part : {"policy sink:4+60,kv=f16", "capacity 64", "(F16)", "1 thread(s)",
                                 "own pool", "at no stream index"})
    EXPECT_NE(got[0].text.find(part), std::string::npos) << part << " in: " << got[0].text;
}

// The warning comes once per stream, when the stream reaches the trained context (512),
// and only for spans that reach untrained distances.
TEST_F(LogTest, WarnsOncePastTrainedContext) {
  auto m = tiny();
  const auto tokens = test::random_tokens(600, 2);
  auto warnings_after = [&](const std::string& spec, int64_t n) {
    Session s(*m, opts(spec));
    take();
    s.feed(std::span(tokens).first(static_cast<size_t>(n)));
    return containing(take(), "past the model's trained context");
  };
  EXPECT_TRUE(warnings_after("sink:4+60,positions=absolute", 512).empty());
  const auto abs = warnings_after("sink:4+60,positions=absolute", 600);
  ASSERT_EQ(abs.size(), 1u);
  EXPECT_EQ(abs[0].level, LogLevel::kWarn);
  EXPECT_NE(abs[0].text.find("stream index 512"), std::string::npos) << abs[0].text;
  EXPECT_NE(abs[0].text.find("positions=absolute"), std::string::npos) << abs[0].text;
  EXPECT_EQ(warnings_after("full", 600).size(), 1u);
  EXPECT_TRUE(warnings_after("sink:4+60", 600).empty());  // cache positions: ranks < 64
  EXPECT_TRUE(warnings_after("window:64,positions=absolute", 600).empty());  // distances < 64
  EXPECT_TRUE(warnings_after("full", 500).empty());

  // Once per stream: more tokens add none; after reset() the new stream warns again.
  Session s(*m, opts("full"));
  s.feed(tokens);
  s.feed(std::span(tokens).first(10));
  EXPECT_EQ(containing(take(), "past the model's").size(), 1u);
  s.reset();
  s.feed(tokens);
  EXPECT_EQ(containing(take(), "past the model's").size(), 1u);

  set_log_level(LogLevel::kOff);
  EXPECT_TRUE(warnings_after("full", 600).empty());
}

TEST_F(LogTest, EnvironmentSetsTheLevel) {
  ::setenv("SPILLWAY_LOG_LEVEL", "debug", 1);
  reset_log();
  EXPECT_EQ(log_level(), LogLevel::kDebug);
  ::setenv("SPILLWAY_LOG_LEVEL", "off", 1);
  reset_log();
  EXPECT_EQ(log_level(), LogLevel::kOff);
  ::setenv("SPILLWAY_LOG_LEVEL", "chatty", 1);  // not a level: the default stays
  reset_log();
  EXPECT_EQ(log_level(), LogLevel::kWarn);
  ::setenv("SPILLWAY_LOG_LEVEL", "error", 1);
  reset_log();
  set_log_level(LogLevel::kInfo);  // the API overrides the environment
  EXPECT_EQ(log_level(), LogLevel::kInfo);
}

TEST_F(LogTest, SpdlogSinkReceivesMessages) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%n|%l|%v");
  set_log_sink(sink);
  set_log_level(LogLevel::kInfo);
  EXPECT_EQ(logger()->name(), "spillway");
  auto m = tiny();
  EXPECT_NE(out.str().find("spillway|info|loaded "), std::string::npos) << out.str();
  EXPECT_TRUE(take().empty());  // the callback was replaced
}

// Reconfiguring while other threads log: every message reaches exactly one of the sinks
// that were current meanwhile, whole (TSan checks the rest).
TEST_F(LogTest, ReconfigureWhileLogging) {
  set_log_level(LogLevel::kInfo);
  std::atomic<int64_t> other{0};
  std::atomic<bool> stop{false};
  constexpr int kThreads = 4, kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < kPerThread; ++i) logger()->info("thread {} message {}", t, i);
    });
  std::thread flipper([&] {
    for (int i = 0; !stop.load(); ++i) {
      if (i % 2 == 0)
        set_log_callback([&](LogLevel, std::string_view m) {
          if (m.rfind("thread ", 0) == 0) ++other;
        });
      else
        set_log_callback([this](LogLevel l, std::string_view m) {
          std::lock_guard<std::mutex> lock(mutex_);
          messages_.push_back({l, std::string(m)});
        });
      set_log_level(LogLevel::kInfo);
    }
  });
  for (auto& t : threads) t.join();
  stop = true;
  flipper.join();
  set_log_callback({});
  const auto mine = containing(take(), "thread ");
  EXPECT_EQ(static_cast<int64_t>(mine.size()) + other.load(), int64_t{kThreads} * kPerThread);
}

}  // namespace
}  // namespace spillway
