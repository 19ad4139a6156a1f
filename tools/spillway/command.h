// Subcommands of the spillway CLI register themselves here: one file per command
// (cmd_<name>.cpp) with a static Registrar. main() parses, then runs the chosen one.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace spillway::cli {

// A command adds its subcommand and options to the app, and returns the function that
// runs it (called after parsing when the subcommand was chosen). The function returns
// the exit status; errors are thrown (spillway::InvalidArgument -> 2, others -> 1).
using Setup = std::function<std::function<int()>(CLI::App& app)>;

struct Command {
  std::string name;
  Setup setup;
};

std::vector<Command>& registry();

struct Registrar {
  Registrar(std::string name, Setup setup) {
    registry().push_back({std::move(name), std::move(setup)});
  }
};

// The default model path (DESIGN.md): models/SmolLM2-135M-Instruct.Q4_1.gguf.
inline constexpr const char* kDefaultModel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

}  // namespace spillway::cli
