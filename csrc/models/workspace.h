// Scratch buffers for one forward pass, grown on demand and reused.
//
// Each request owns its workspace, so concurrent calls on one model share only
// the (read-only) weights.
#pragma once

#include <cstdint>
#include <memory>

namespace pali {

class Buffer {
 public:
  // At least n floats, 64-byte aligned, uninitialized (every user writes before
  // it reads: zero-filling a request's buffers cost ~5% of a small model's
  // latency); contents are not preserved across growth.
  float* get(int64_t n) {
    if (capacity_ < n) {
      storage_.reset(new float[n + 16]);
      capacity_ = n;
      auto address = reinterpret_cast<uintptr_t>(storage_.get());
      data_ = storage_.get() + ((64 - address % 64) % 64) / sizeof(float);
    }
    return data_;
  }
  // What the last get() returned.
  float* data() const { return data_; }

 private:
  std::unique_ptr<float[]> storage_;
  float* data_ = nullptr;
  int64_t capacity_ = 0;
};

}  // namespace pali
