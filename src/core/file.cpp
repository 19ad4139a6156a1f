#include "spillway/core/file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

#include "spillway/core/error.h"

namespace spillway {

namespace {

std::string describe(int err) {
  return std::strerror(err);
}

// A temporary name next to `path` that did not exist, created with mode 0644 less the
// umask (what a plain open would give the file); returns the descriptor.
int create_temporary(const std::string& path, std::string& tmp) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..")
    throw IoError(fmt::format("{}: not a file name", path));
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    tmp = fmt::format("{}.{}.{}-{}-{:08x}.tmp", dir, name, ::getpid(), counter++, rd());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) return fd;
    if (errno != EEXIST) {
      const int err = errno;
      throw IoError(fmt::format("{}: cannot create a file in its folder: {}", path, describe(err)));
    }
  }
  throw IoError(fmt::format("{}: cannot find a free temporary name next to it", path));
}

}  // namespace

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(fmt::format("cannot open '{}' for reading: {}", path, describe(errno)));
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw IoError(fmt::format("error reading '{}': {}", path, describe(err)));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

void write_file_atomic(const std::string& path, std::string_view data) {
  write_file_atomic(path, std::span<const std::string_view>(&data, 1));
}

void write_file_atomic(const std::string& path, std::span<const std::string_view> parts) {
  if (path.empty()) throw IoError("write_file_atomic: empty path");
  std::string tmp;
  const int fd = create_temporary(path, tmp);
  const auto fail = [&](const char* what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw IoError(fmt::format("{}: {}: {}", path, what, describe(err)));
  };
  for (const std::string_view data : parts) {
    const char* p = data.data();
    size_t left = data.size();
    while (left > 0) {
      const ssize_t n = ::write(fd, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("cannot write", errno);
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) fail("cannot flush to the disk", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw IoError(fmt::format("{}: cannot close: {}", path, describe(err)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw IoError(fmt::format("{}: cannot replace: {}", path, describe(err)));
  }
}

}  // namespace spillway
