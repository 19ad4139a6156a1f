#include "spillway/core/process.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <ctime>

namespace spillway {

uint64_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int got = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  const long page = sysconf(_SC_PAGESIZE);
  if (got != 2 || page <= 0) return 0;
  return static_cast<uint64_t>(resident) * static_cast<uint64_t>(page);
}

namespace {

// A "Key:   N kB" line of /proc/self/status in bytes, or 0 where absent.
uint64_t status_kib_field(const char* key) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  const size_t n = std::strlen(key);
  char line[256];
  unsigned long kb = 0;
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f) != nullptr)
    found = std::strncmp(line, key, n) == 0 && std::sscanf(line + n, "%lu", &kb) == 1;
  std::fclose(f);
  return found ? static_cast<uint64_t>(kb) * 1024 : 0;
}

}  // namespace

uint64_t peak_resident_bytes() {
  if (const uint64_t b = status_kib_field("VmHWM:")) return b;
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0 && ru.ru_maxrss > 0)
    return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // kilobytes on Linux
  return 0;
}

uint64_t anonymous_resident_bytes() {
  return status_kib_field("RssAnon:");
}

double process_cpu_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return -1.0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace spillway
