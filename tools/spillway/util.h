// Helpers shared by the CLI's commands.
#pragma once

#include <cstdint>
#include <string>

#include "spillway/core/file.h"

namespace spillway::cli {

// True when stderr is a terminal (the progress bar is drawn only then).
bool stderr_is_tty();

// Progress on stderr: on a terminal a one-line bar redrawn in place; otherwise (a log) a
// plain line a minute, none for a run shorter than that.
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
