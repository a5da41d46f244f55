// The memory a request may still take: requests whose buffers cannot fit in it
// are refused with a clear error before anything is allocated (an allocation
// that large may succeed on an overcommitting kernel and get the process killed
// when its pages are touched).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace pali {

// Bytes of physical memory, or 0 when the system does not say.
inline double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

namespace detail {

// The first number in a small text file, or a negative value when it has none
// (cgroup v2 writes "max" for no limit).
inline double read_number(const char* path) {
  FILE* f = std::fopen(path, "r");
  if (!f) return -1;
  double value = -1;
  if (std::fscanf(f, "%lf", &value) != 1) value = -1;
  std::fclose(f);
  return value;
}

// MemAvailable of /proc/meminfo in bytes: what can be allocated without swapping.
inline double meminfo_available_bytes() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  double kib = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "MemAvailable:", 13) == 0 && std::sscanf(line + 13, "%lf", &kib) == 1) break;
  std::fclose(f);
  return kib < 0 ? -1 : kib * 1024.0;
}

}  // namespace detail

// Bytes this process may still allocate: the least of the machine's available
// memory and its cgroup's remaining limit; the physical memory when neither is
// known (0 when that is unknown too).
inline double available_memory_bytes() {
  double available = detail::meminfo_available_bytes();
  const double limit = detail::read_number("/sys/fs/cgroup/memory.max");
  const double used = detail::read_number("/sys/fs/cgroup/memory.current");
  if (limit > 0 && used >= 0) {
    const double remaining = std::max(limit - used, 0.0);
    available = available < 0 ? remaining : std::min(available, remaining);
  }
  return available >= 0 ? available : physical_memory_bytes();
}

// Throws OutOfMemory (the caller's message, then how much is available) when
// `bytes` will not fit in the memory left. Requests below a small size are let
// through without reading /proc (a read costs about as much as a decode step of
// a small model); an allocation that size that still fails is a bad_alloc.
template <typename Message>
void require_available_memory(double bytes, Message&& message) {
  constexpr double kAlwaysAllowed = 256.0 * (1 << 20);
  if (bytes < kAlwaysAllowed) return;
  const double available = available_memory_bytes();
  if (available > 0 && bytes > available)
    throw OutOfMemory(str_cat(message(), " would take ", bytes / (1 << 30), " GiB; this machine has ",
                              available / (1 << 30), " GiB available"));
}

}  // namespace pali
