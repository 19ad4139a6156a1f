// Helpers shared by the CLI's commands.
#pragma once

#include <cstdint>
#include <string>

namespace spillway::cli {

// Whole file as bytes. Throws IoError naming the file.
std::string read_text_file(const std::string& path);

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
