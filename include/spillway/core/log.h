// The library's log: one logger named "spillway", quiet by default, configurable by the
// embedding program. This header needs nothing but the standard library; a program that
// uses spdlog itself can also hand the logger an spdlog sink (core/log_spdlog.h).
//
// Default: level `warn`, messages to stderr. Ordinary operation (a model loaded, the
// kernels chosen, a session made) logs at info and debug and so prints nothing; a
// warning means something that likely gives wrong or degraded results (a stream running
// past the model's trained context, an SPILLWAY_ISA the CPU cannot run). `off` silences
// even those.
//
// SPILLWAY_LOG_LEVEL (trace, debug, info, warn, error, critical, off) sets the level when
// the logger is first used (and at reset_log()); an unknown value leaves `warn` and says
// so in a warning. set_log_level() overrides the environment.
//
// What is logged, and at which level:
//   info   model loaded (path, architecture, name, layers, vocabulary, trained context,
//          file size and tensor types, load time); kernel family chosen at run time
//   debug  each session made (policy, cache capacity and slots, KV bytes, batch, threads)
//   warn   a stream past the model's trained context (a growing cache, or
//          positions=absolute with tokens older than the window kept); SPILLWAY_ISA
//          naming kernels the CPU cannot run, or none at all
//
// Thread safety: every function here may be called from any thread at any time, also
// while other threads log; a message goes wholly to the sink that was set when it was
// written. Sinks and callbacks may be called from any thread that runs library code,
// one message at a time.
#pragma once

#include <functional>
#include <optional>
#include <string_view>

namespace spillway {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kCritical, kOff };

// "trace", "debug", "info", "warn" (or "warning"), "error", "critical", "off"; nullopt
// for anything else (case-sensitive).
std::optional<LogLevel> parse_log_level(std::string_view name);
const char* log_level_name(LogLevel level);
// The names parse_log_level accepts, for usage messages: "trace|debug|...|off".
const char* log_level_names();

// Messages below `level` are dropped (and not formatted).
void set_log_level(LogLevel level);
LogLevel log_level();

// Sends every message at or above the level to `callback` (the message without time or
// level decoration) instead of stderr. The callback must not throw and must not call
// back into the library's log configuration. An empty function goes back to stderr.
using LogCallback = std::function<void(LogLevel level, std::string_view message)>;
void set_log_callback(LogCallback callback);

// Back to the defaults: stderr, level from SPILLWAY_LOG_LEVEL or warn.
void reset_log();

}  // namespace spillway
