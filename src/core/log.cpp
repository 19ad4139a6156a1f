#include "spillway/core/log.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "spillway/core/log_spdlog.h"

namespace spillway {
namespace {

constexpr const char* kLoggerName = "spillway";
constexpr LogLevel kDefaultLevel = LogLevel::kWarn;

spdlog::level::level_enum to_spdlog(LogLevel l) {
  switch (l) {
    case LogLevel::kTrace:
      return spdlog::level::trace;
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
    case LogLevel::kCritical:
      return spdlog::level::critical;
    case LogLevel::kOff:
      break;
  }
  return spdlog::level::off;
}

LogLevel from_spdlog(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::trace:
      return LogLevel::kTrace;
    case spdlog::level::debug:
      return LogLevel::kDebug;
    case spdlog::level::info:
      return LogLevel::kInfo;
    case spdlog::level::warn:
      return LogLevel::kWarn;
    case spdlog::level::err:
      return LogLevel::kError;
    case spdlog::level::critical:
      return LogLevel::kCritical;
    default:
      break;
  }
  return LogLevel::kOff;
}

// Hands each message's text to a LogCallback (base_sink serializes the calls).
class CallbackSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit CallbackSink(LogCallback cb) : cb_(std::move(cb)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    cb_(from_spdlog(msg.level), std::string_view(msg.payload.data(), msg.payload.size()));
  }
  void flush_() override {}

 private:
  LogCallback cb_;
};

std::shared_ptr<spdlog::sinks::sink> default_sink() {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] spillway %l: %v");
  return sink;
}

// The current logger; replaced (never mutated but for its atomic level) under the mutex,
// so a thread that took a copy logs to a consistent sink.
struct State {
  std::mutex mutex;
  std::shared_ptr<spdlog::logger> logger;  // null until first use
};

State& state() {
  static State s;
  return s;
}

void install(State& s, std::shared_ptr<spdlog::sinks::sink> sink, LogLevel level) {
  auto lg = std::make_shared<spdlog::logger>(kLoggerName, std::move(sink));
  lg->set_level(to_spdlog(level));
  lg->flush_on(spdlog::level::warn);
  s.logger = std::move(lg);
}

// Installs the defaults; returns the SPILLWAY_LOG_LEVEL value when it is not a level.
std::optional<std::string> install_defaults(State& s) {
  const char* env = std::getenv("SPILLWAY_LOG_LEVEL");
  std::optional<LogLevel> level;
  if (env && *env) level = parse_log_level(env);
  install(s, default_sink(), level.value_or(kDefaultLevel));
  if (env && *env && !level) return std::string(env);
  return std::nullopt;
}

void warn_bad_env(const std::shared_ptr<spdlog::logger>& lg,
                  const std::optional<std::string>& bad) {
  if (bad)
    lg->warn("SPILLWAY_LOG_LEVEL='{}' is not a level ({}); using {}", *bad, log_level_names(),
             log_level_name(kDefaultLevel));
}

}  // namespace

std::optional<LogLevel> parse_log_level(std::string_view name) {
  if (name == "trace") return LogLevel::kTrace;
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  if (name == "critical") return LogLevel::kCritical;
  if (name == "off") return LogLevel::kOff;
  return std::nullopt;
}

const char* log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return "trace";
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
    case LogLevel::kCritical:
      return "critical";
    case LogLevel::kOff:
      break;
  }
  return "off";
}

const char* log_level_names() {
  return "trace|debug|info|warn|error|critical|off";
}

namespace {

// Runs fn(state) under the mutex with the logger in place (the defaults on first use).
template <class F>
std::shared_ptr<spdlog::logger> locked(F&& fn) {
  State& s = state();
  std::optional<std::string> bad;
  std::shared_ptr<spdlog::logger> lg;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.logger) bad = install_defaults(s);
    fn(s);
    lg = s.logger;
  }
  warn_bad_env(lg, bad);  // outside the lock: a callback sink may take its time
  return lg;
}

}  // namespace

std::shared_ptr<spdlog::logger> logger() {
  return locked([](State&) {});
}

void set_log_level(LogLevel level) {
  locked([&](State& s) { s.logger->set_level(to_spdlog(level)); });
}

LogLevel log_level() {
  return from_spdlog(logger()->level());
}

void set_log_sink(std::shared_ptr<spdlog::sinks::sink> sink) {
  locked([&](State& s) {
    install(s, sink ? std::move(sink) : default_sink(), from_spdlog(s.logger->level()));
  });
}

void set_log_callback(LogCallback callback) {
  set_log_sink(callback ? std::make_shared<CallbackSink>(std::move(callback)) : nullptr);
}

void reset_log() {
  State& s = state();
  std::optional<std::string> bad;
  std::shared_ptr<spdlog::logger> lg;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    bad = install_defaults(s);
    lg = s.logger;
  }
  warn_bad_env(lg, bad);
}

}  // namespace spillway
