// The reordering of a per-row key/value cache, shared by the decoders: beam
// search's reordering, and the dropping of rows whose generation finished.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "models/workspace.h"

namespace pali {

// Checks that every source[r], r < rows, names one of the `old_rows` rows and
// that there are no more rows than before.
inline void check_row_sources(const int64_t* source, int64_t rows, int64_t old_rows) {
  PALI_CHECK(rows >= 0 && rows <= old_rows, "a decoder session of ", old_rows, " rows cannot continue with ", rows);
  for (int64_t r = 0; r < rows; ++r)
    PALI_CHECK(source[r] >= 0 && source[r] < old_rows, "row ", r, " would continue from row ", source[r], " of ",
               old_rows);
}

// Row r < rows of every cache ([old rows, row_stride] floats; the first `used`
// of a row hold data) takes the contents row source[r] had; rows past `rows`
// are left as they are, unused. Nothing moves when source is the identity; a
// strictly increasing source (rows dropped, the rest in order) moves rows in
// place, once each.
inline void reorder_cache_rows(std::vector<Buffer>& caches, int64_t rows, int64_t row_stride, int64_t used,
                               const int64_t* source, std::vector<float>& scratch) {
  bool identity = true, increasing = true;
  for (int64_t r = 0; r < rows; ++r) {
    identity &= source[r] == r;
    increasing &= r == 0 || source[r] > source[r - 1];
  }
  if (identity || used == 0) return;
  if (increasing) {
    // source[r] >= r: row r's source is never a row already written.
    for (auto& cache : caches)
      for (int64_t r = 0; r < rows; ++r)
        if (source[r] != r)
          std::memcpy(cache.data() + r * row_stride, cache.data() + source[r] * row_stride, used * sizeof(float));
    return;
  }
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
