// The AMX tile layout both AMX prefill kernels use (ops/linear_avx512.cc for
// bfloat16 products, ops/linear_int8_cpu.cc for int8): every one of the 8
// tiles is 16 rows of 64 bytes; tiles 0-3 hold the sums of a block of
// kBlockRows rows x 32 outputs (two panels) in 4-byte elements, 4-5 two
// 16-row slices of x, 6-7 the matching slices of two panels. Only functions
// compiled for AMX (target attributes, chosen at run time) may call these.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#define PALI_AMX_TILE_INLINE inline __attribute__((always_inline, target("amx-tile")))

namespace pali::amx {

constexpr int64_t kBlockRows = 32;  // rows of x per block of tiles
constexpr int64_t kBlockRowBytes = 128;  // one row of a block's sums: 32 outputs of 4 bytes

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Loads the layout above into this thread's tile configuration (release it with _tile_release()).
PALI_AMX_TILE_INLINE void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
}

PALI_AMX_TILE_INLINE void zero_sums() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// The block's sums into c: kBlockRows rows of kBlockRowBytes.
PALI_AMX_TILE_INLINE void store_sums(void* c) {
  char* bytes = static_cast<char*>(c);
  _tile_stored(0, bytes, kBlockRowBytes);
  _tile_stored(1, bytes + 64, kBlockRowBytes);
  _tile_stored(2, bytes + 16 * kBlockRowBytes, kBlockRowBytes);
  _tile_stored(3, bytes + 16 * kBlockRowBytes + 64, kBlockRowBytes);
}

}  // namespace pali::amx

#undef PALI_AMX_TILE_INLINE

#endif  // __x86_64__
