// Where tests find the repository's files and the default model.
#pragma once

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace spillway::test {

inline std::string source_path(const std::string& rel) {
  return std::string(SPILLWAY_SOURCE_DIR) + "/" + rel;
}

// The default model: $SPILLWAY_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf.
inline std::string default_model_path() {
  if (const char* p = std::getenv("SPILLWAY_MODEL")) return p;
  return source_path("models/SmolLM2-135M-Instruct.Q4_1.gguf");
}

// Gemma 3 270M: $SPILLWAY_GEMMA3_MODEL or models/gemma-3-270m-q4_k_m.gguf.
inline std::string gemma3_model_path() {
  if (const char* p = std::getenv("SPILLWAY_GEMMA3_MODEL")) return p;
  return source_path("models/gemma-3-270m-q4_k_m.gguf");
}

inline std::string corpus_path() {
  return source_path("data/austen.txt");
}

// A model test without its files skips, unless SPILLWAY_REQUIRE_MODEL=1 (CI) makes a
// missing file a failure.
#define SPILLWAY_REQUIRE_FILE(path)                                              \
  do {                                                                           \
    if (!std::filesystem::exists(path)) {                                        \
      if (std::getenv("SPILLWAY_REQUIRE_MODEL")) FAIL() << "missing " << (path); \
      GTEST_SKIP() << "missing " << (path) << " (run scripts/setup.sh)";         \
    }                                                                            \
  } while (0)

// A fresh temporary directory per test.
inline std::filesystem::path temp_dir() {
  auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  auto dir =
      std::filesystem::temp_directory_path() / ("spillway-test-" + std::to_string(::getpid()) +
                                                "-" + info->test_suite_name() + "." + info->name());
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace spillway::test
