// Scratch buffers for one forward pass, grown on demand and reused.
//
// Each request owns its workspace, so concurrent calls on one model share only
// the (read-only) weights.
#pragma once

#include <cstdint>
#include <vector>

namespace pali {

class Buffer {
 public:
  // At least n floats, 64-byte aligned; contents are not preserved across growth.
  float* get(int64_t n) {
    if (static_cast<int64_t>(storage_.size()) < n + 16) storage_.resize(n + 16);
    auto address = reinterpret_cast<uintptr_t>(storage_.data());
    return storage_.data() + ((64 - address % 64) % 64) / sizeof(float);
  }

 private:
  std::vector<float> storage_;
};

}  // namespace pali
