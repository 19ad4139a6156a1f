// Subcommands of the spillway CLI register themselves here: one file per command
// (cmd_<name>.cpp) with a static Registrar. main() parses, then runs the chosen one.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "spillway/session/generate.h"

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

// The default model path (docs/architecture.md): models/SmolLM2-135M-Instruct.Q4_1.gguf.
inline constexpr const char* kDefaultModel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

// The options of every command that generates (generate, chat): the sampler chain
// (--temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, --seed) and when
// to stop (-n, --ignore-eos, --stop); `what_n` says what -n counts.
void add_generation_options(CLI::App& sub, SamplerParams& sampling, GenerateOptions& gen,
                            const std::string& what_n);

}  // namespace spillway::cli
