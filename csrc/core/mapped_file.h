// A file mapped read-only into memory.
//
// Model weights are read straight from the mapping (no copy of the file), and
// released page by page once packed, so that loading does not hold the file and
// the packed weights in memory at once.
//
// A mapping is only as stable as the file: a file rewritten in place while it
// is read changes under the reader, and reading a page truncated away raises
// SIGBUS. The mapping is watched (core/mapping_fault_guard.h), so such a read
// gives zeros instead of a signal, and check_unchanged() reports it, or any
// change of the file's size or modification time since it was opened, as a
// ModelFileError. Readers call it after they have read what they need.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace pali {

class MappedFile {
 public:
  // Throws ModelFileError naming the path when it cannot be opened or mapped,
  // or is not a regular file (a FIFO or a device is refused without blocking).
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  // Drops this process's pages of [p, p + n) (whole pages inside the range):
  // the bytes stay readable (a later read faults them back in from the page
  // cache), but they stop counting in the resident set. Used once a weight has
  // been copied into its packed form.
  void release(const void* p, size_t n) const;
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Throws ModelFileError when the file changed while it was mapped: a read
  // faulted on a page truncated away, or its size or modification time differs.
  void check_unchanged() const;

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
  int64_t modified_ns_ = 0;
  int guard_slot_ = -1;
};

}  // namespace pali
