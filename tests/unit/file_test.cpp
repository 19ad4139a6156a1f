// write_file_atomic: the new file or the old one, never part of one, also when the writer
// is killed mid-write; clear errors; no temporary left behind when it returns.
#include "spillway/core/file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "spillway/core/error.h"

namespace spillway {
namespace {

namespace fs = std::filesystem;

class WriteFileAtomic : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("spillway-file-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string read(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }
  // Files in the folder other than `keep`.
  std::vector<std::string> others(const std::string& keep) const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().filename() != keep) out.push_back(e.path().filename());
    return out;
  }

  fs::path dir_;
};

TEST_F(WriteFileAtomic, WritesAndReplacesLeavingNothingElse) {
  const fs::path p = dir_ / "out.json";
  write_file_atomic(p, "first\n");
  EXPECT_EQ(read(p), "first\n");
  write_file_atomic(p, std::string(100000, 'x'));
  EXPECT_EQ(read(p), std::string(100000, 'x'));
  write_file_atomic(p, "");
  EXPECT_EQ(read(p), "");
  EXPECT_TRUE(others("out.json").empty());
  // The mode a plain open would give: 0644 less the umask.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644 & ~mask);
}

TEST_F(WriteFileAtomic, ErrorsNameThePath) {
  const std::string missing = (dir_ / "no-such-folder" / "out.csv").string();
  try {
    write_file_atomic(missing, "x");
    FAIL() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_file_atomic("", "x"), IoError);
  EXPECT_THROW(write_file_atomic((dir_ / "").string(), "x"), IoError);  // a folder
  // A target that is a folder: the rename fails, and the temporary is removed.
  fs::create_directories(dir_ / "taken");
  EXPECT_THROW(write_file_atomic((dir_ / "taken").string(), "x"), IoError);
  EXPECT_EQ(others("taken").size(), 0u);
}

// A child process replaces a file holding "old" contents with 24 MB and is killed after a
// growing delay. Whenever it dies, the file holds the old contents or all of the new,
// never a prefix; some kills land mid-write (a temporary is left, the old file is intact)
// and some after the rename, so both cases are seen.
TEST_F(WriteFileAtomic, AKilledWriterLeavesTheOldFileOrTheNew) {
  const fs::path p = dir_ / "result.json";
  const std::string old_text(1000, 'A');
  const std::string new_text(24 << 20, 'B');
  int mid_write = 0, completed = 0;
  for (int trial = 0; trial < 40 && (mid_write == 0 || completed == 0 || trial < 12); ++trial) {
    write_file_atomic(p, old_text);
    for (const std::string& f : others("result.json")) fs::remove(dir_ / f);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      try {
        write_file_atomic(p, new_text);
      } catch (...) {
        _exit(2);
      }
      _exit(0);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500 * (trial % 20) * (trial % 20)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    const std::string now = read(p);
    ASSERT_TRUE(now == old_text || now == new_text)
        << "trial " << trial << ": " << now.size() << " bytes, a part of a file";
    if (now == old_text && WIFSIGNALED(status) && !others("result.json").empty()) ++mid_write;
    if (now == new_text) ++completed;
  }
  EXPECT_GT(mid_write, 0) << "no kill landed mid-write: the test did not test";
  EXPECT_GT(completed, 0);
}

}  // namespace
}  // namespace spillway
