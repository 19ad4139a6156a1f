// Helpers shared by the CLI's commands.
#pragma once

#include <cstdint>
#include <string>

#include "spillway/core/file.h"

namespace spillway::cli {

// True when stderr is a terminal (progress is shown only then).
bool stderr_is_tty();

// A one-line progress bar on stderr, redrawn in place; silent when not a terminal.
class Progress {
 public:
  explicit Progress(std::string label);
  void update(int64_t done, int64_t total);
  void finish();

 private:
  std::string label_;
  bool tty_;
  double start_;
  double last_draw_ = -1.0;
};

// "98.41 MiB": binary units, two decimals
std::string human_bytes(uint64_t bytes);

}  // namespace spillway::cli
