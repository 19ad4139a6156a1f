// What the running process uses of the machine, as the kernel reports it (Linux /proc;
// elsewhere getrusage where it has the figure, else 0).
#pragma once

#include <cstdint>

namespace spillway {

// Resident set size now, in bytes (/proc/self/statm); 0 where unknown.
uint64_t resident_bytes();

// Largest resident set size so far, in bytes (VmHWM of /proc/self/status, else
// getrusage's ru_maxrss); 0 where unknown.
uint64_t peak_resident_bytes();

}  // namespace spillway
