// The library's logger as spdlog sees it, for programs that use spdlog themselves and want
// spillway's messages in their own sinks (core/log.h has the rest of the contract and a
// callback for programs that do not). Including this header requires spdlog: the
// installed package links spdlog privately, so such a program finds and links
// spdlog::spdlog itself, the same spdlog the library was built with.
#pragma once

#include <spdlog/logger.h>
#include <spdlog/sinks/sink.h>

#include <memory>

namespace spillway {

// The logger named "spillway" (never null). Not registered in spdlog's global registry,
// so spdlog::set_level() and friends of the program leave it alone. A new logger object
// replaces it whenever the sink changes: take a fresh one rather than keeping it.
std::shared_ptr<spdlog::logger> logger();

// Sends every message at or above the level to `sink` (its own pattern and level apply
// on top). The sink must be thread-safe (an *_mt sink): library code logs from whatever
// thread runs it. nullptr goes back to stderr.
void set_log_sink(std::shared_ptr<spdlog::sinks::sink> sink);

}  // namespace spillway
