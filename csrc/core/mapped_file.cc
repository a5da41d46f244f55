#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/mapping_fault_guard.h"

namespace pali {
namespace {

int64_t modification_ns(const struct stat& info) {
  return static_cast<int64_t>(info.st_mtim.tv_sec) * 1000000000 + info.st_mtim.tv_nsec;
}

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw ModelFileError(str_cat(path, ": cannot open: ", std::strerror(errno)));
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->fd_ = fd;  // closed by the destructor from here on
  struct stat info {};
  if (::fstat(fd, &info) != 0) throw ModelFileError(str_cat(path, ": cannot stat: ", std::strerror(errno)));
  if (!S_ISREG(info.st_mode)) throw ModelFileError(str_cat(path, ": not a regular file"));
  file->size_ = static_cast<size_t>(info.st_size);
  file->modified_ns_ = modification_ns(info);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
      throw ModelFileError(str_cat(path, ": cannot map into memory: ", std::strerror(errno)));
    file->data_ = static_cast<const uint8_t*>(p);
    file->guard_slot_ = mapping_fault_guard::watch(p, file->size_);
  }
  return file;
}

void MappedFile::check_unchanged() const {
  struct stat info {};
  const bool changed = mapping_fault_guard::faulted(guard_slot_) ||
                       (::fstat(fd_, &info) == 0 &&
                        (static_cast<size_t>(info.st_size) != size_ || modification_ns(info) != modified_ns_));
  if (changed)
    throw ModelFileError(str_cat(path_, ": the file changed while it was being read (was it rewritten in "
                                        "place, e.g. by cp?); load it again once it is complete"));
}

void MappedFile::release(const void* p, size_t n) const {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const auto start = reinterpret_cast<uintptr_t>(data_);
  if (!data_ || begin < start || begin + n > start + size_) return;
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + n) / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  mapping_fault_guard::unwatch(guard_slot_);
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace pali
