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

// The anonymous part of the resident set, in bytes (RssAnon of /proc/self/status): the heap
// and private mappings, without the file pages the process maps (a model read through
// mmap), whose residency follows the page cache rather than what the process allocated;
// 0 where unknown.
uint64_t anonymous_resident_bytes();

// CPU time the process has used so far, every thread, in seconds (CLOCK_PROCESS_CPUTIME_ID);
// a negative value where unknown. Unlike wall time it does not grow while other processes
// hold the cores.
double process_cpu_seconds();

}  // namespace spillway
