// The machine's physical memory: requests whose buffers cannot fit in it are
// refused with a clear error before anything is allocated (an allocation that
// large may succeed on an overcommitting kernel and get the process killed
// when its pages are touched).
#pragma once

#include <unistd.h>

namespace pali {

// Bytes of physical memory, or 0 when the system does not say.
inline double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

}  // namespace pali
