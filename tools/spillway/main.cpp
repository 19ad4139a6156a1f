#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>

#include "command.h"
#include "spillway/core/build_info.h"
#include "spillway/core/error.h"
#include "spillway/core/log.h"
#include "spillway/ops/matmul.h"

namespace spillway::cli {
std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace spillway::cli

int main(int argc, char** argv) {
  using namespace spillway;
  CLI::App app{"spillway: streaming LLM inference with a sink-aware KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] {
    return fmt::format("spillway {} (commit {}, kernels {})", version(), source_commit(),
                       ops::kernel_isa());
  });
  // Global options, accepted before or after the subcommand (subcommands let options they
  // do not know fall through to here). The library's log goes to stderr; without these
  // options its level is SPILLWAY_LOG_LEVEL's or warn (core/log.h).
  int verbose = 0;
  std::string log_level;
  app.fallthrough();
  app.add_flag("-v,--verbose", verbose,
               "Log more to stderr: -v info (model, kernels), -vv debug (sessions)");
  app.add_option("--log-level", log_level,
                 std::string("Log level of the library: ") + log_level_names() +
                     " (default: SPILLWAY_LOG_LEVEL, else warn)");
  auto& commands = cli::registry();
  std::sort(commands.begin(), commands.end(),
            [](const cli::Command& a, const cli::Command& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, std::function<int()>>> runners;
  for (auto& c : commands) {
    auto run = c.setup(app);
    runners.emplace_back(app.get_subcommand(c.name), std::move(run));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    fmt::print(stderr, "error: {}\n", e.what());
    fmt::print(stderr, "run '{} --help' for usage\n",
               app.get_name().empty() ? "spillway" : app.get_name());
    return 2;
  }
  try {
    if (!log_level.empty()) {
      const auto level = parse_log_level(log_level);
      if (!level)
        throw InvalidArgument(
            fmt::format("--log-level: '{}' is not one of {}", log_level, log_level_names()));
      set_log_level(*level);
    } else if (verbose > 0) {
      set_log_level(verbose == 1 ? LogLevel::kInfo : LogLevel::kDebug);
    }
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    return 2;
  } catch (const InvalidArgument& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
