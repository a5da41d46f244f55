// A file mapped read-only into memory.
//
// Model weights are used straight from the mapping: loading a large model costs
// the page faults of the bytes actually touched, not a copy of the file.
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
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace pali
