// T5 relative position buckets (HF transformers' _relative_position_bucket) and
// the per-distance bias table.
#include <cmath>

#include "core/error.h"
#include "ops/position_bucket.h"

namespace pali {

int32_t relative_position_bucket(int64_t relative_position, bool bidirectional,
                                 int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0;
  int64_t n;
  if (bidirectional) {
    num_buckets /= 2;
    if (relative_position > 0) bucket += num_buckets;
    n = relative_position < 0 ? -relative_position : relative_position;
  } else {
    n = relative_position < 0 ? -relative_position : 0;
  }
  const int64_t max_exact = num_buckets / 2;
  if (n < max_exact) return static_cast<int32_t>(bucket + n);
  // As PyTorch evaluates it: float32 tensor ops, the Python-float divisor and the
  // integer factor rounded to float32, truncation toward zero.
  const float ratio = static_cast<float>(n) / static_cast<float>(max_exact);
  const float lg = std::log(ratio);
  const float denom = static_cast<float>(std::log(static_cast<double>(max_distance) /
                                                  static_cast<double>(max_exact)));
  const float scaled = (lg / denom) * static_cast<float>(num_buckets - max_exact);
  // Past the range (or NaN, when max_distance <= max_exact, which configs refuse)
  // the cast would be undefined: those distances take the last bucket.
  int64_t large = num_buckets - 1;
  if (scaled >= 0 && scaled < static_cast<float>(num_buckets)) large = max_exact + static_cast<int64_t>(scaled);
  if (large > num_buckets - 1) large = num_buckets - 1;
  return static_cast<int32_t>(bucket + large);
}

void relative_bias_table(const float* embedding, int64_t num_buckets, int64_t heads,
                         bool bidirectional, int64_t max_distance, int64_t rel_offset,
                         int64_t num_rel, float* table) {
  PALI_CHECK_ARG(num_buckets > 0 && heads > 0 && num_rel >= 0 && max_distance > 0,
                 "relative_bias_table: bad sizes");
  PALI_CHECK_ARG(embedding && (table || num_rel == 0), "relative_bias_table: null pointer");
  for (int64_t c = 0; c < num_rel; ++c) {
    const int32_t b = relative_position_bucket(c - rel_offset, bidirectional, num_buckets, max_distance);
    PALI_CHECK(b >= 0 && b < num_buckets, "bucket ", b, " out of range");
    for (int64_t h = 0; h < heads; ++h) table[h * num_rel + c] = embedding[b * heads + h];
  }
}

}  // namespace pali
