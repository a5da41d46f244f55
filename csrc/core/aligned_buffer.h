// A scratch buffer grown on demand and reused: 64-byte aligned (whole cache
// lines, aligned vector loads) and uninitialized (every user writes before it
// reads; zero-filling a small model's request buffers cost ~5% of its latency).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace pali {

template <typename T>
class AlignedBuffer {
 public:
  // At least n elements; contents are not preserved across growth.
  T* get(int64_t n) {
    if (capacity_ < n) {
      const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
      storage_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
      if (!storage_) throw std::bad_alloc();
      capacity_ = n;
    }
    return storage_.get();
  }
  // What the last get() returned.
  T* data() const { return storage_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> storage_;
  int64_t capacity_ = 0;
};

}  // namespace pali
