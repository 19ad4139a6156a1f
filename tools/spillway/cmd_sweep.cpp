// spillway sweep FILE --out DIR [...]: the policy sweeps of the Python package
// (spillway-sweep, docs/sweeps.md) from the command line. The arguments go unchanged to
// `python3 -m spillway.sweep` (SPILLWAY_PYTHON names another interpreter, e.g. a venv's),
// which replaces this process, so its output, Ctrl-C and exit status are the sweep's.
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/core/error.h"

namespace spillway::cli {
namespace {

// execvp's argument vector over `args` (which must outlive it).
std::vector<char*> argv_of(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

// Runs `args` and returns its exit status (127 when it cannot start).
int run_quietly(const std::vector<std::string>& args) {
  std::vector<char*> argv = argv_of(args);
  const pid_t pid = fork();
  if (pid < 0) throw IoError(fmt::format("spillway sweep: fork: {}", std::strerror(errno)));
  if (pid == 0) {
    // The child's output would only repeat the import error explained below.
    if (freopen("/dev/null", "w", stdout) == nullptr ||
        freopen("/dev/null", "w", stderr) == nullptr)
      _exit(127);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      throw IoError(fmt::format("spillway sweep: waitpid: {}", std::strerror(errno)));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run_sweep(const std::vector<std::string>& rest) {
  const char* env = std::getenv("SPILLWAY_PYTHON");
  const std::string python = env && *env ? env : "python3";
  const int rc = run_quietly({python, "-c", "import spillway.sweep"});
  if (rc == 127)
    throw IoError(
        fmt::format("spillway sweep: cannot run '{}' (set SPILLWAY_PYTHON to a Python "
                    "with the spillway package)",
                    python));
  if (rc != 0)
    throw IoError(
        fmt::format("spillway sweep: '{}' cannot import spillway.sweep: install the "
                    "package with pip install '.[sweep]', or set SPILLWAY_PYTHON to "
                    "a Python that has it (e.g. build-py/venv/bin/python)",
                    python));
  std::vector<std::string> args{python, "-m", "spillway.sweep"};
  args.insert(args.end(), rest.begin(), rest.end());
  std::vector<char*> argv = argv_of(args);
  std::fflush(stdout);
  std::fflush(stderr);
  execvp(argv[0], argv.data());
  throw IoError(fmt::format("spillway sweep: cannot run '{}': {}", python, std::strerror(errno)));
}

Registrar reg("sweep", [](CLI::App& app) {
  auto* sub = app.add_subcommand(
      "sweep",
      "Run a policy sweep (the Python package's spillway-sweep, docs/sweeps.md): FILE --out DIR "
      "[--ray auto|local|ADDRESS] [--jobs N]; every argument goes to `python3 -m spillway.sweep` "
      "(SPILLWAY_PYTHON: another interpreter), `spillway sweep --help` is its help");
  sub->prefix_command();  // everything after `sweep` is the sweep's
  sub->allow_extras();
  sub->fallthrough(false);  // global options go before `sweep`
  sub->set_help_flag("");   // --help too
  return [sub] { return run_sweep(sub->remaining()); };
});

}  // namespace
}  // namespace spillway::cli
