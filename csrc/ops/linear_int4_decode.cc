// The W4A8 product of int4 weights (ops/linear_int4_decode.h has the arithmetic):
// x quantized once per call, threads over panels of 16 outputs. Decode streams
// every panel once for all rows; prefill takes the rows in passes (8, 12 with
// vpdpbusd) over blocks of panels held in L2.
//
// A panel stores [K/2][16] bytes: byte j of pair row t holds output j's codes
// for k = 2t (low nibble) and 2t + 1 (high nibble). The SIMD kernels split a
// load into low and high nibbles and interleave them bytewise (unpacklo/hi_epi8),
// which puts each output's (k, k+1) codes side by side; vpmaddubsw then
// multiplies them by x's (k, k+1) bytes and adds the pair into 16 bits. A block
// of 32 inputs adds at most 16 such pairs per output, 16 * 2 * 15 * 127 < 32767,
// so the 16-bit sums never saturate.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "ops/cpu_kernels.h"
#include "ops/linear_int4_decode.h"
#include "ops/linear_int8.h"
#include "ops/row_dispatch.h"

// GCC 12 reports its own AVX-512 intrinsics' _mm512_undefined_ps() idiom as maybe uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace pali {
namespace {

constexpr int64_t P = kLinearPanel;
constexpr int64_t B = kInt4ActivationBlock;
// Rows one pass over a panel serves at most (AVX2 has registers for 4).
constexpr int kRows = 8;
constexpr int kRowsAvx2 = 4;
constexpr int kRowsVnni = 12;  // one accumulator a row leaves registers for more
constexpr int kMaxRows = kRowsVnni;
// How far ahead of its loads a kernel asks for the weights' cache lines: with
// two threads each streaming one panel at a time, the hardware prefetchers
// alone left the int4 decode at about half the read bandwidth once the
// weights came from memory rather than cache (1 KB ahead ran 1.3-2.3x faster
// on 6 copies of each of Gemma 2 2B's layer shapes; 2 KB less so).
constexpr int64_t kPrefetchAhead = 1024;
// Prefill (more rows than one pass serves): at most this many panels in a
// block that the passes of rows share from L2, and about this many bytes of a
// pass's x (spread out for vpmaddubsw: 8 a value) in a chunk of K that the block's panels share from L1.
constexpr int64_t kMaxBlockPanels = 32;
constexpr int64_t kChunkBytes = 16 << 10;

// x as int8 blocks: q [m][blocks * 32], and per block its scale and 8 * sum(q),
// which the stored nibbles' offset of 8 adds to each output. The vpmaddubsw
// kernels read q spread out as their multiplications take it (spread_pairs):
// 8 bytes per input, made once per call instead of once per panel; vpdpbusd
// broadcasts q's 4 bytes as it goes.
struct Int8Blocks {
  int64_t blocks = 0;
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> offset;
  std::vector<int8_t> spread;

  const int8_t* row(int64_t r) const { return q.data() + r * blocks * B; }
  const int8_t* spread_row(int64_t r) const { return spread.data() + r * blocks * B * 8; }
};

// k inputs of each row, zero-padded to k_pad (whole blocks).
void quantize_rows(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t k_pad, Int8Blocks& out) {
  out.blocks = k_pad / B;
  out.q.resize(static_cast<size_t>(m * out.blocks * B));
  out.scale.resize(static_cast<size_t>(m * out.blocks));
  out.offset.resize(static_cast<size_t>(m * out.blocks));
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * ldx;
    int8_t* qr = out.q.data() + r * out.blocks * B;
    for (int64_t b = 0; b < out.blocks; ++b) {
      const int64_t k0 = b * B, k1 = std::max(k0, std::min(k, k0 + B));
      out.scale[r * out.blocks + b] = quantize_int8_symmetric(xr + k0, k1 - k0, qr + k0, B);
      int32_t sum = 0;
      for (int64_t i = k0; i < k0 + B; ++i) sum += qr[i];
      out.offset[r * out.blocks + b] = 8 * sum;
    }
  }
}

#if defined(PALI_CPU_AVX2)
// For vpmaddubsw: per 4 inputs of a row, x's (k, k+1) bytes 8 times, then (k+2, k+3) 8 times.
void spread_pairs(int64_t m, Int8Blocks& xq) {
  const int64_t steps = xq.blocks * B / 4;
  xq.spread.resize(static_cast<size_t>(m * steps * 32));
  const __m256i pattern = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,  //
                                           2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  for (int64_t r = 0; r < m; ++r) {
    const int8_t* q = xq.row(r);
    int8_t* out = xq.spread.data() + r * steps * 32;
    for (int64_t t = 0; t < steps; ++t) {
      int32_t four;
      std::memcpy(&four, q + 4 * t, 4);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32 * t),
                          _mm256_shuffle_epi8(_mm256_set1_epi32(four), pattern));
    }
  }
}

#endif

// Where a panel's 16 outputs of row r go: y = t + bias (+ y), the first nvalid.
struct PanelOut {
  float* y;
  int64_t ldy;
  const float* bias;  // [16] or null
  int nvalid;
  bool accumulate;
};

void store_rows(const float* totals, int rows, const PanelOut& o) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < o.nvalid; ++j) {
      float v = totals[r * P + j];
      if (o.bias) v += o.bias[j];
      if (o.accumulate) v += o.y[r * o.ldy + j];
      o.y[r * o.ldy + j] = v;
    }
}

// The float scales of block b's weight group, one per output.
void group_scales(const uint16_t* gscale, int64_t b, int64_t group, float* out) {
  const uint16_t* s = gscale + (b * B / group) * P;
  for (int64_t j = 0; j < P; ++j) out[j] = half_to_float(s[j]);
}

// ------------------------------------------------------------------ portable

void panel_portable(const Int8Blocks& xq, int64_t r0, int rows, const unsigned char* w, int64_t group,
                    const uint16_t* gscale, int64_t b0, int64_t b1, float* totals) {
  for (int64_t b = b0; b < b1; ++b) {
    float gs[P];
    group_scales(gscale, b, group, gs);
    const unsigned char* wb = w + b * (B / 2) * P;
    for (int r = 0; r < rows; ++r) {
      const int8_t* xb = xq.row(r0 + r) + b * B;
      int32_t acc[P] = {};
      for (int64_t t = 0; t < B / 2; ++t) {
        const int32_t x_even = xb[2 * t], x_odd = xb[2 * t + 1];
        for (int64_t j = 0; j < P; ++j) {
          const unsigned char code = wb[t * P + j];
          acc[j] += (code & 0x0F) * x_even + (code >> 4) * x_odd;
        }
      }
      const float sx = xq.scale[(r0 + r) * xq.blocks + b];
      const int32_t offset = xq.offset[(r0 + r) * xq.blocks + b];
      for (int64_t j = 0; j < P; ++j)
        totals[r * P + j] = std::fma(static_cast<float>(acc[j] - offset), sx * gs[j], totals[r * P + j]);
    }
  }
}

// ------------------------------------------------------------------ AVX2

#if defined(PALI_CPU_AVX2)
#define PALI_INLINE_AVX2 inline __attribute__((always_inline))

// Block b of up to kRows rows: 8 steps of 32 bytes, each two pair rows (4 k)
// of the panel's 16 outputs. Lane 0 of an interleaved load holds k = 4s, 4s+1,
// lane 1 k = 4s+2, 4s+3, so x's 4 bytes are spread the same way.
template <int MR>
PALI_INLINE_AVX2 void panel_avx2(const Int8Blocks& xq, int64_t r0, const unsigned char* w, int64_t group,
                                 const uint16_t* gscale, int64_t b0, int64_t b1, float* totals) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  __m256 total[MR][2];
  for (int r = 0; r < MR; ++r) {
    total[r][0] = _mm256_loadu_ps(totals + r * P);
    total[r][1] = _mm256_loadu_ps(totals + r * P + 8);
  }
  __m256 gs0 = _mm256_setzero_ps(), gs1 = gs0;
  for (int64_t b = b0; b < b1; ++b) {
    if (b == b0 || (b * B) % group == 0) {
      const uint16_t* s = gscale + (b * B / group) * P;
      gs0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
      gs1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 8)));
    }
    const unsigned char* wb = w + b * (B / 2) * P;
    __m256i lo[MR], hi[MR];
    for (int r = 0; r < MR; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
      if (s % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(wb + s * 32 + kPrefetchAhead), _MM_HINT_T0);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + s * 32));
      const __m256i even = _mm256_and_si256(v, nibble);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
      const __m256i w0 = _mm256_unpacklo_epi8(even, odd);  // outputs 0-7
      const __m256i w1 = _mm256_unpackhi_epi8(even, odd);  // outputs 8-15
      for (int r = 0; r < MR; ++r) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.spread_row(r0 + r) + (b * 8 + s) * 32));
        lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(w0, xv));
        hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(w1, xv));
      }
    }
    for (int r = 0; r < MR; ++r) {
      const float sx = xq.scale[(r0 + r) * xq.blocks + b];
      const __m256i offset = _mm256_set1_epi32(xq.offset[(r0 + r) * xq.blocks + b]);
      const __m256i s0 = _mm256_sub_epi32(_mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo[r])),
                                                           _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo[r], 1))),
                                          offset);
      const __m256i s1 = _mm256_sub_epi32(_mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi[r])),
                                                           _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi[r], 1))),
                                          offset);
      const __m256 vsx = _mm256_set1_ps(sx);
      total[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(vsx, gs0), total[r][0]);
      total[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(vsx, gs1), total[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(totals + r * P, total[r][0]);
    _mm256_storeu_ps(totals + r * P + 8, total[r][1]);
  }
}

// ------------------------------------------------------------------ AVX-512

#define PALI_INLINE_AVX512BW inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq")))
#define PALI_AVX512BW __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// The 16-bit sums of outputs 0-7 (or 8-15) in the four lanes of v, added in 32 bits.
PALI_INLINE_AVX512BW __m256i add_lanes(__m512i v) {
  const __m512i wide = _mm512_add_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(v)),
                                        _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1)));
  return _mm256_add_epi32(_mm512_castsi512_si256(wide), _mm512_extracti64x4_epi64(wide, 1));
}

// As panel_avx2 with 64-byte steps: four pair rows (8 k), one per 128-bit lane.
template <int MR>
PALI_INLINE_AVX512BW void panel_avx512(const Int8Blocks& xq, int64_t r0, const unsigned char* w, int64_t group,
                                       const uint16_t* gscale, int64_t b0, int64_t b1, float* totals) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512 total[MR];
  for (int r = 0; r < MR; ++r) total[r] = _mm512_loadu_ps(totals + r * P);
  __m512 gs = _mm512_setzero_ps();
  for (int64_t b = b0; b < b1; ++b) {
    if (b == b0 || (b * B) % group == 0)
      gs = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gscale + (b * B / group) * P)));
    const unsigned char* wb = w + b * (B / 2) * P;
    __m512i lo[MR], hi[MR];
    for (int r = 0; r < MR; ++r) lo[r] = hi[r] = _mm512_setzero_si512();
    for (int s = 0; s < 4; ++s) {
      _mm_prefetch(reinterpret_cast<const char*>(wb + s * 64 + kPrefetchAhead), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(wb + s * 64);
      const __m512i even = _mm512_and_si512(v, nibble);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      const __m512i w0 = _mm512_unpacklo_epi8(even, odd);
      const __m512i w1 = _mm512_unpackhi_epi8(even, odd);
      for (int r = 0; r < MR; ++r) {
        const __m512i xv = _mm512_loadu_si512(xq.spread_row(r0 + r) + (b * 4 + s) * 64);
        lo[r] = _mm512_add_epi16(lo[r], _mm512_maddubs_epi16(w0, xv));
        hi[r] = _mm512_add_epi16(hi[r], _mm512_maddubs_epi16(w1, xv));
      }
    }
    for (int r = 0; r < MR; ++r) {
      // Each lane summed 4 of the block's 16 pair rows.
      const __m512i sums = _mm512_inserti64x4(_mm512_castsi256_si512(add_lanes(lo[r])), add_lanes(hi[r]), 1);
      const __m512i exact = _mm512_sub_epi32(sums, _mm512_set1_epi32(xq.offset[(r0 + r) * xq.blocks + b]));
      const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(xq.scale[(r0 + r) * xq.blocks + b]), gs);
      total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, total[r]);
    }
  }
  for (int r = 0; r < MR; ++r) _mm512_storeu_ps(totals + r * P, total[r]);
}

#define PALI_INLINE_AVX512VNNI \
  inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define PALI_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

// With vpdpbusd, which adds 4 products of adjacent bytes into 32 bits: each
// 64-byte step (pair rows 4s..4s+3, k = 8s..8s+7) is regrouped into two
// registers whose 32-bit lanes hold one output's codes for 4 consecutive k:
// `low` for k 8s..8s+3, `high` for 8s+4..8s+7, so each row's one accumulator
// takes both, with x's 4 bytes broadcast from its int8 row. Qwords are
// reordered within each 256-bit half so that a 128-bit lane holds two pair
// rows' codes of 8 outputs, then bytes are interleaved (low and high nibble:
// (k, k+1)), 16-bit pairs (k, k+1 | k+2, k+3), and 128-bit lanes regrouped.
// The lanes hold outputs 0-3, 8-11, 4-7, 12-15, the order the totals are kept
// in (and put back at the end). A block's exact sum then takes 3 instructions
// to its float total.
template <int MR>
PALI_INLINE_AVX512VNNI void panel_avx512_vnni(const Int8Blocks& xq, int64_t r0, const unsigned char* w, int64_t group,
                                              const uint16_t* gscale, int64_t b0, int64_t b1, float* totals) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512 total[MR];
  for (int r = 0; r < MR; ++r) {
    const __m512 t = _mm512_loadu_ps(totals + r * P);
    total[r] = _mm512_shuffle_f32x4(t, t, _MM_SHUFFLE(3, 1, 2, 0));
  }
  const int8_t* xrow[MR];
  for (int r = 0; r < MR; ++r) xrow[r] = xq.row(r0 + r);
  __m512 gs = _mm512_setzero_ps();
  for (int64_t b = b0; b < b1; ++b) {
    if (b == b0 || (b * B) % group == 0) {
      gs = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gscale + (b * B / group) * P)));
      gs = _mm512_shuffle_f32x4(gs, gs, _MM_SHUFFLE(3, 1, 2, 0));
    }
    const unsigned char* wb = w + b * (B / 2) * P;
    __m512i sum[MR];
    // Starting from -8 * sum(qx) takes the nibbles' offset out of the exact sum.
    for (int r = 0; r < MR; ++r) sum[r] = _mm512_set1_epi32(-xq.offset[(r0 + r) * xq.blocks + b]);
    for (int s = 0; s < 4; ++s) {
      _mm_prefetch(reinterpret_cast<const char*>(wb + s * 64 + kPrefetchAhead), _MM_HINT_T0);
      const __m512i v = _mm512_permutex_epi64(_mm512_loadu_si512(wb + s * 64), _MM_SHUFFLE(3, 1, 2, 0));
      const __m512i even = _mm512_and_si512(v, nibble);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      const __m512i first = _mm512_unpacklo_epi8(even, odd);
      const __m512i second = _mm512_unpackhi_epi8(even, odd);
      const __m512i c = _mm512_unpacklo_epi16(first, second);
      const __m512i d = _mm512_unpackhi_epi16(first, second);
      const __m512i low = _mm512_shuffle_i64x2(c, d, _MM_SHUFFLE(1, 0, 1, 0));
      const __m512i high = _mm512_shuffle_i64x2(c, d, _MM_SHUFFLE(3, 2, 3, 2));
      const int64_t at = b * B + s * 8;
      for (int r = 0; r < MR; ++r) {
        int32_t x_low, x_high;
        std::memcpy(&x_low, xrow[r] + at, 4);
        std::memcpy(&x_high, xrow[r] + at + 4, 4);
        sum[r] = _mm512_dpbusd_epi32(sum[r], low, _mm512_set1_epi32(x_low));
        sum[r] = _mm512_dpbusd_epi32(sum[r], high, _mm512_set1_epi32(x_high));
      }
    }
    for (int r = 0; r < MR; ++r) {
      const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(xq.scale[(r0 + r) * xq.blocks + b]), gs);
      total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r]), scale, total[r]);
    }
  }
  for (int r = 0; r < MR; ++r) _mm512_storeu_ps(totals + r * P, _mm512_shuffle_f32x4(total[r], total[r], _MM_SHUFFLE(3, 1, 2, 0)));
}

// panel_*<min(rows, MR)>: dispatch_rows' lambdas would not inherit the AVX-512 target attributes.
template <int MR>
PALI_AVX512VNNI void rows_avx512_vnni(int rows, const Int8Blocks& xq, int64_t r0, const unsigned char* w,
                                      int64_t group, const uint16_t* gscale, int64_t b0, int64_t b1, float* totals) {
  if constexpr (MR > 1) {
    if (rows < MR) return rows_avx512_vnni<MR - 1>(rows, xq, r0, w, group, gscale, b0, b1, totals);
  }
  panel_avx512_vnni<MR>(xq, r0, w, group, gscale, b0, b1, totals);
}

template <int MR>
PALI_AVX512BW void rows_avx512(int rows, const Int8Blocks& xq, int64_t r0, const unsigned char* w, int64_t group,
                               const uint16_t* gscale, int64_t b0, int64_t b1, float* totals) {
  if constexpr (MR > 1) {
    if (rows < MR) return rows_avx512<MR - 1>(rows, xq, r0, w, group, gscale, b0, b1, totals);
  }
  panel_avx512<MR>(xq, r0, w, group, gscale, b0, b1, totals);
}

#endif

}  // namespace

void linear_int4_decode(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
                        bool accumulate, Int4DecodeKernel kernel) {
  PALI_CHECK_ARG(is_int4(w.format) && m >= 0, "linear_int4_decode: needs an i4 weight");
#if !defined(PALI_CPU_AVX2)
  kernel = Int4DecodeKernel::portable;
#endif
  thread_local Int8Blocks xq;
  quantize_rows(x, ldx, m, w.k, w.packed_k(), xq);
#if defined(PALI_CPU_AVX2)
  if (kernel == Int4DecodeKernel::avx512 || kernel == Int4DecodeKernel::avx2) spread_pairs(m, xq);
#endif
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const int64_t group = w.sum_group();
  const int pass_rows = kernel == Int4DecodeKernel::avx2 ? kRowsAvx2
                        : kernel == Int4DecodeKernel::avx512_vnni ? kRowsVnni
                                                                  : kRows;
  // Panels go in blocks that stay in L2 while every pass of rows goes over
  // them, and a pass takes K in chunks whose bytes of x stay in L1 while the
  // block's panels go over them (the totals of the block's panels wait in
  // `totals`). With one pass (decode) a block is one panel and a chunk all of K.
  const int64_t passes = (m + pass_rows - 1) / pass_rows;
  const int64_t panel_bytes = std::max<int64_t>(w.panel_bytes(), 1);
  const int64_t block = passes <= 1 ? 1 : std::clamp<int64_t>((256 << 10) / panel_bytes, 1, kMaxBlockPanels);
  const int64_t x_bytes = kernel == Int4DecodeKernel::avx512 || kernel == Int4DecodeKernel::avx2 ? 8 : 1;
  const int64_t chunk = passes <= 1 ? xq.blocks : std::max<int64_t>(1, kChunkBytes / (pass_rows * B * x_bytes));
  const int64_t grain = std::max<int64_t>(block, (64 << 10) / panel_bytes);
  const Int8Blocks& rows_q = xq;
  parallel_for(0, w.num_panels(), grain, [&](int64_t pb, int64_t pe) {
    alignas(64) float totals[kMaxBlockPanels * kMaxRows * P];
    for (int64_t first = pb; first < pe; first += block) {
      const int64_t last = std::min(pe, first + block);
      for (int64_t r0 = 0; r0 < m; r0 += pass_rows) {
        const int rows = static_cast<int>(std::min<int64_t>(pass_rows, m - r0));
        std::fill(totals, totals + (last - first) * pass_rows * P, 0.0f);
        for (int64_t b0 = 0; b0 < rows_q.blocks; b0 += chunk) {
          const int64_t b1 = std::min(rows_q.blocks, b0 + chunk);
          for (int64_t p = first; p < last; ++p) {
            const unsigned char* panel = w.panel(p);
            const uint16_t* gscale = w.group_scales(p);
            float* t = totals + (p - first) * pass_rows * P;
            switch (kernel) {
#if defined(PALI_CPU_AVX2)
              case Int4DecodeKernel::avx512_vnni:
                rows_avx512_vnni<kRowsVnni>(rows, rows_q, r0, panel, group, gscale, b0, b1, t);
                break;
              case Int4DecodeKernel::avx512:
                rows_avx512<kRows>(rows, rows_q, r0, panel, group, gscale, b0, b1, t);
                break;
              case Int4DecodeKernel::avx2:
                dispatch_rows<kRowsAvx2>(rows, [&](auto mr) {
                  panel_avx2<decltype(mr)::value>(rows_q, r0, panel, group, gscale, b0, b1, t);
                });
                break;
#endif
              default: panel_portable(rows_q, r0, rows, panel, group, gscale, b0, b1, t);
            }
          }
        }
        for (int64_t p = first; p < last; ++p) {
          const PanelOut o{y + r0 * ldy + p * P, ldy, bias ? bias + p * P : nullptr,
                           static_cast<int>(std::min<int64_t>(P, w.n - p * P)), accumulate};
          store_rows(totals + (p - first) * pass_rows * P, rows, o);
        }
      }
    }
  });
}

}  // namespace pali
