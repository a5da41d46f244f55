// Beam search's reordering of a per-row key/value cache, shared by the decoders.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/parallel.h"
#include "models/workspace.h"

namespace pali {

// Row r of every cache ([rows, row_stride] floats; the first `used` of a row
// hold data) takes the contents row source[r] had. Nothing moves when source
// is the identity.
inline void reorder_cache_rows(std::vector<Buffer>& caches, int64_t rows, int64_t row_stride, int64_t used,
                               const int64_t* source, std::vector<float>& scratch) {
  bool identity = true;
  for (int64_t r = 0; r < rows; ++r) identity &= source[r] == r;
  if (identity || used == 0) return;
  scratch.resize(rows * used);
  float* staged = scratch.data();
  for (auto& cache : caches) {
    parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        std::memcpy(staged + r * used, cache.data() + source[r] * row_stride, used * sizeof(float));
    });
    parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        std::memcpy(cache.data() + r * row_stride, staged + r * used, used * sizeof(float));
    });
  }
}

}  // namespace pali
