// The bounds and field rules that every architecture's config table uses.
//
// Why: each architecture writes its config schema once, as a ConfigTable;
// the bounds below are what keeps every shape a config implies far inside
// 64-bit arithmetic (a product of any three sizes, or of two sequence lengths
// and a width, fits) and far beyond any real model. They are one set for all
// architectures, so a limit means the same thing whichever file names it.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/config_table.h"

namespace pali::config_rules {

constexpr int64_t kMaxWidth = int64_t{1} << 20;
constexpr int64_t kMaxHeads = int64_t{1} << 12;
constexpr int64_t kMaxHeadDim = int64_t{1} << 16;
constexpr int64_t kMaxImageSize = int64_t{1} << 16;
constexpr int64_t kMaxPatches = int64_t{1} << 20;
constexpr int64_t kMaxLayers = int64_t{1} << 10;
constexpr int64_t kMaxBuckets = int64_t{1} << 16;
constexpr int64_t kMaxTokens = int64_t{1} << 20;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

// An integer in [low, high].
inline FieldRule size(int64_t high, bool is_required = true, int64_t low = 1) {
  FieldRule r;
  r.required = is_required;
  r.low = low;
  r.high = high;
  return r;
}

// A token id below `vocab_bound`; the config's own vocab_size, a relation
// between fields, is checked by its validate().
inline FieldRule token_id(int64_t vocab_bound, bool is_required) { return size(vocab_bound - 1, is_required, 0); }

// A number above zero; nullable: JSON null stands for "not set" (stored as 0).
inline FieldRule positive(bool is_required = false, bool nullable = false) {
  FieldRule r;
  r.required = is_required;
  r.positive = true;
  r.nullable = nullable;
  return r;
}

// A string (or each string of a list) from `choices`.
inline FieldRule one_of(std::vector<std::string> choices, bool is_required) {
  FieldRule r;
  r.required = is_required;
  r.choices = std::move(choices);
  return r;
}

}  // namespace pali::config_rules
