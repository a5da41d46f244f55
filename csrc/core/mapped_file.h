// A file mapped read-only into memory.
//
// Model weights are read straight from the mapping (no copy of the file), and
// released page by page once packed, so that loading does not hold the file and
// the packed weights in memory at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace pali {

class MappedFile {
 public:
  // Throws ModelFileError naming the path when it cannot be opened or mapped.
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

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace pali
