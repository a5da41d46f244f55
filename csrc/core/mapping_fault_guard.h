// Turns a read from a mapped model file that was truncated underneath (SIGBUS)
// into an error the reader reports, instead of a signal that kills the process.
//
// When a mapped file shrinks (as `cp` over it does: it truncates, then writes),
// reading a page past its new end raises SIGBUS. A process-wide SIGBUS handler
// looks the faulting address up among the watched mappings: when it lies in one,
// the handler maps a page of zeros over the faulting page, marks that mapping as
// faulted and returns, so the read completes (with zeros) and the owner of the
// mapping raises an error at its next check (MappedFile::check_unchanged). A
// fault anywhere else goes to the handler installed before this one, or gets
// the default action, as if this handler were not there.
#pragma once

#include <cstddef>

namespace pali::mapping_fault_guard {

// Watches [begin, begin + size) (page-aligned begin, as mmap returns it) and
// installs the handler if it is not installed. Returns a slot for unwatch() and
// faulted(), or -1 when all slots are taken (the mapping is then unguarded).
int watch(const void* begin, size_t size);
// Stops watching; call before unmapping.
void unwatch(int slot);
// Whether a read in the watched range faulted since watch().
bool faulted(int slot);

}  // namespace pali::mapping_fault_guard
