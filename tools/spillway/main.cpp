#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>

#include "command.h"
#include "spillway/core/error.h"

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
  app.set_version_flag("--version", "spillway 0.1.0");
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
