// Int8 linear layers with int8 activations (W8A8).
//
// Why: an int8 multiply-add retires four times as many products per
// instruction as a float32 FMA (AVX-512 VNNI vpdpbusd: 64 per 512-bit
// instruction), which speeds up compute-bound prefill, and it reads a quarter
// of float32's weight bytes in decode. The activations are quantized on the
// fly, per row, symmetric:
//   sx[r] = max_k |x[r,k]| / 127 (1 for an all-zero row), qx = round_half_even(x / sx) in [-127, 127]
// and the product is exact in int32:
//   y[r,n] = float(sum_k qx[r,k] * qw[n,k]) * (sx[r] * sw[n]) + b[n].
// The weights are packed [panel][k/4][16][4]: four k of one output in one
// 32-bit lane, which is what both kernels multiply against four bytes of x.
//   * avx512_vnni: vpdpbusd takes unsigned x, so x is stored as qx + 128 and
//     the prepared 128 * sum_k qw[n,k] is taken off each sum.
//   * avx2: vpmaddubsw(|qx|, sign(qx) * qw) then vpmaddwd with ones; pairs of
//     products stay within int16 (2 * 127 * 127 < 32767), so nothing saturates.
//   * amx: the prefill (m > 8) on AMX tiles, TDPBSSD (signed x and weights,
//     64 k per tile row; the panels are the tiles' layout as they are); its
//     decode is avx512_vnni's.
//   * neon (aarch64, Armv8.0): vmull_s8 products into int16, pairwise added into int32.
//   * neon_dotprod (aarch64 with the Armv8.2 dot product, HWCAP_ASIMDDP): sdot,
//     four byte products per 32-bit lane, signed x and weights.
//   * portable: the same sums in plain C++, on every architecture.
// Every kernel computes the same integers, so they give the same y bit for bit
// (the kernels of a build share one epilogue: AVX2 on x86-64, plain C++ elsewhere).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/parallel.h"
#include "ops/amx_tiles.h"
#include "ops/linear_int8.h"
#include "ops/linear_kernels.h"
#include "ops/row_dispatch.h"
#include "ops/simd_lanes.h"

namespace pali {

namespace {

constexpr int64_t P = kLinearPanel;
#define PALI_ALWAYS_INLINE inline __attribute__((always_inline))

enum class Int8Kernel : int { avx2, avx512_vnni, amx, neon, neon_dotprod, portable };
constexpr Int8Kernel kAllKernels[] = {Int8Kernel::avx2, Int8Kernel::avx512_vnni, Int8Kernel::amx, Int8Kernel::neon,
                                      Int8Kernel::neon_dotprod, Int8Kernel::portable};

const char* kernel_name(Int8Kernel k) {
  switch (k) {
    case Int8Kernel::avx2: return "avx2";
    case Int8Kernel::avx512_vnni: return "avx512_vnni";
    case Int8Kernel::amx: return "amx";
    case Int8Kernel::neon: return "neon";
    case Int8Kernel::neon_dotprod: return "neon_dotprod";
    case Int8Kernel::portable: return "portable";
  }
  return "?";
}

#if defined(PALI_CPU_AVX2)
bool cpu_has_vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

bool kernel_available(Int8Kernel k) {
  switch (k) {
#if defined(PALI_CPU_AVX2)
    case Int8Kernel::avx2: return true;
    case Int8Kernel::avx512_vnni: return cpu_has_vnni();
    case Int8Kernel::amx: return cpu_has_vnni() && linear_avx512::cpu_has_amx_int8();
#endif
#if defined(PALI_CPU_NEON)
    case Int8Kernel::neon: return true;
    case Int8Kernel::neon_dotprod: return cpu_has_dotprod();
#endif
    case Int8Kernel::portable: return true;
    default: return false;
  }
}

std::atomic<int> forced_kernel{-1};

// The best kernel this CPU runs.
Int8Kernel best_kernel() {
  for (Int8Kernel k : {Int8Kernel::amx, Int8Kernel::avx512_vnni, Int8Kernel::avx2, Int8Kernel::neon_dotprod,
                       Int8Kernel::neon})
    if (kernel_available(k)) return k;
  return Int8Kernel::portable;
}

Int8Kernel active_kernel() {
  const int forced = forced_kernel.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Int8Kernel>(forced);
  if (cpu_kernels() == CpuKernels::portable) return Int8Kernel::portable;
  static const Int8Kernel best = best_kernel();
  return best;
}

// Where one row's 16 int32 sums of a panel go, and how they are scaled.
struct RowOutput {
  const float* w_scale;  // [16] per-output weight scales
  const float* bias;     // [16] or null
  int nvalid;
  bool accumulate;
};

#if defined(PALI_CPU_AVX2)
#define PALI_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// ---------------------------------------------------------------------------
// Activations: one row of x into int8 values (as int8, or as uint8 = q + 128),
// zero-padded to k_pad. Returns the row's scale.
template <typename Q>
float quantize_row(const float* x, int64_t k, Q* q, int64_t k_pad) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 vmax = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float amax = 0.0f;
  for (float v : lanes) amax = std::max(amax, v);
  for (; i < k; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;

  constexpr bool as_u8 = std::is_same_v<Q, uint8_t>;
  const __m256 vs = _mm256_set1_ps(scale);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m256i shift = _mm256_set1_epi32(as_u8 ? 128 : 0);
  i = 0;
  for (; i + 16 <= k; i += 16) {
    // Default rounding mode: to nearest, ties to even; NaN converts to INT_MIN and is clamped.
    __m256i a = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(x + i), vs));
    __m256i b = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(x + i + 8), vs));
    a = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(a, lo), hi), shift);
    b = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(b, lo), hi), shift);
    // packs works within 128-bit lanes: the permute puts the 16 values back in order.
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
    const __m128i lo_words = _mm256_castsi256_si128(words), hi_words = _mm256_extracti128_si256(words, 1);
    const __m128i bytes = as_u8 ? _mm_packus_epi16(lo_words, hi_words) : _mm_packs_epi16(lo_words, hi_words);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), bytes);
  }
  for (; i < k; ++i) {
    const float v = std::nearbyint(x[i] / scale);
    const int qi = std::isnan(v) ? -127 : static_cast<int>(std::min(127.0f, std::max(-127.0f, v)));
    q[i] = static_cast<Q>(qi + (as_u8 ? 128 : 0));
  }
  for (; i < k_pad; ++i) q[i] = static_cast<Q>(as_u8 ? 128 : 0);  // meets zero weights
  return scale;
}

// ---------------------------------------------------------------------------
// AVX2 epilogue: 16 int32 sums of one row into y.
PALI_ALWAYS_INLINE void store_sums(const int32_t* sums, float x_scale, const RowOutput& o, float* y) {
  const __m256 xs = _mm256_set1_ps(x_scale);
  for (int h = 0; h < 2; ++h) {
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums + 8 * h))),
                             _mm256_mul_ps(xs, _mm256_load_ps(o.w_scale + 8 * h)));
    if (o.bias) v = _mm256_add_ps(v, _mm256_load_ps(o.bias + 8 * h));
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    const int n = std::min(8, o.nvalid - 8 * h);
    if (n == 8) {
      if (o.accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(y + 8 * h));
      _mm256_storeu_ps(y + 8 * h, v);
    } else {
      for (int j = 0; j < n; ++j) y[8 * h + j] = o.accumulate ? y[8 * h + j] + tmp[j] : tmp[j];
    }
  }
}

// ---------------------------------------------------------------------------
// AVX2: MR rows of int8 x (row stride ldq) times one packed panel, two
// accumulators of 8 outputs per row. Accumulators are named variables (arrays
// of vectors get spilled by GCC).
#define PALI_SIGNED_ROW(r)                                                                             \
  if constexpr (MR > r) {                                                                              \
    int32_t xquad;                                                                                     \
    std::memcpy(&xquad, xq + (r) * ldq + 4 * g, 4);                                                    \
    const __m256i xb = _mm256_set1_epi32(xquad);                                                       \
    const __m256i xa = _mm256_abs_epi8(xb);                                                            \
    c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(w0, xb)), ones)); \
    c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(w1, xb)), ones)); \
  }
#define PALI_SIGNED_SAVE(r)                                                                   \
  if constexpr (MR > r) {                                                                    \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + (r) * 16), c##r##0);              \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + (r) * 16 + 8), c##r##1);          \
  }

template <int MR>
PALI_ALWAYS_INLINE void signed_kernel(const int8_t* xq, int64_t ldq, const int8_t* wp, int64_t k4,
                                      int32_t* sums) {
  const __m256i z = _mm256_setzero_si256(), ones = _mm256_set1_epi16(1);
  __m256i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
  for (int64_t g = 0; g < k4; ++g) {
    const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + g * 64));
    const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + g * 64 + 32));
    PALI_SIGNED_ROW(0)
    PALI_SIGNED_ROW(1)
    PALI_SIGNED_ROW(2)
    PALI_SIGNED_ROW(3)
  }
  PALI_SIGNED_SAVE(0)
  PALI_SIGNED_SAVE(1)
  PALI_SIGNED_SAVE(2)
  PALI_SIGNED_SAVE(3)
}

template <int MR>
void signed_rows(const int8_t* xq, int64_t ldq, const float* x_scales, const int8_t* wp, int64_t k4,
                 const RowOutput& o, float* y, int64_t ldy) {
  alignas(32) int32_t sums[4 * 16];
  signed_kernel<MR>(xq, ldq, wp, k4, sums);
  for (int r = 0; r < MR; ++r) store_sums(sums + r * 16, x_scales[r], o, y + r * ldy);
}

constexpr int kSignedMR = 4;

void signed_block(const int8_t* xq, int64_t ldq, const float* x_scales, int64_t rows, const int8_t* wp,
                  int64_t k4, const RowOutput& o, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; r += kSignedMR)
    dispatch_rows<kSignedMR>(rows - r, [&](auto mr) {
      signed_rows<decltype(mr)::value>(xq + r * ldq, ldq, x_scales + r, wp, k4, o, y + r * ldy, ldy);
    });
}

// ---------------------------------------------------------------------------
// AVX-512 VNNI: MR rows of uint8 x (qx + 128) times one packed panel, one
// 512-bit accumulator (16 outputs) per row. With fewer than four rows (decode)
// the k groups alternate between two or four sets of accumulators: a single
// chain of vpdpbusd would wait on its latency, not its throughput.
// vpdpbusd in asm: with the intrinsic, GCC 12 copies every accumulator to
// another register and back on each iteration (16 extra moves per 8 products).
#define PALI_QUAD_ROW(acc, r, w, gg)                                                         \
  if constexpr (MR > r) {                                                                    \
    int32_t xquad;                                                                           \
    std::memcpy(&xquad, xq + (r) * ldq + 4 * (gg), 4);                                       \
    const __m512i xb = _mm512_set1_epi32(xquad);                                             \
    asm("vpdpbusd %2, %1, %0" : "+v"(acc##r) : "v"(xb), "v"(w));                             \
  }
#define PALI_QUAD_ROWS4(acc, w, gg) \
  PALI_QUAD_ROW(acc, 0, w, gg) PALI_QUAD_ROW(acc, 1, w, gg) PALI_QUAD_ROW(acc, 2, w, gg) PALI_QUAD_ROW(acc, 3, w, gg)
#define PALI_QUAD_SAVE(r) \
  if constexpr (MR > r) _mm512_storeu_si512(sums + (r) * 16, _mm512_sub_epi32(c##r, correction));

template <int MR>
PALI_TARGET_VNNI PALI_ALWAYS_INLINE void quads_kernel(const uint8_t* xq, int64_t ldq, const int8_t* wp,
                                                      int64_t k4, const int32_t* offset, int32_t* sums) {
  const __m512i z = _mm512_setzero_si512();
  __m512i c0 = z, c1 = z, c2 = z, c3 = z, c4 = z, c5 = z, c6 = z, c7 = z;
  __m512i d0 = z, d1 = z, d2 = z, e0 = z, f0 = z;
#define PALI_QUAD_WEIGHTS(gg) _mm512_load_si512(wp + (gg) * 64)
  int64_t g = 0;
  if constexpr (MR == 1) {
    for (; g + 4 <= k4; g += 4) {
      const __m512i w0 = PALI_QUAD_WEIGHTS(g), w1 = PALI_QUAD_WEIGHTS(g + 1), w2 = PALI_QUAD_WEIGHTS(g + 2),
                    w3 = PALI_QUAD_WEIGHTS(g + 3);
      PALI_QUAD_ROW(c, 0, w0, g)
      PALI_QUAD_ROW(d, 0, w1, g + 1)
      PALI_QUAD_ROW(e, 0, w2, g + 2)
      PALI_QUAD_ROW(f, 0, w3, g + 3)
    }
  } else if constexpr (MR <= 3) {
    for (; g + 2 <= k4; g += 2) {
      const __m512i w0 = PALI_QUAD_WEIGHTS(g), w1 = PALI_QUAD_WEIGHTS(g + 1);
      PALI_QUAD_ROW(c, 0, w0, g)
      PALI_QUAD_ROW(c, 1, w0, g)
      PALI_QUAD_ROW(c, 2, w0, g)
      PALI_QUAD_ROW(d, 0, w1, g + 1)
      PALI_QUAD_ROW(d, 1, w1, g + 1)
      PALI_QUAD_ROW(d, 2, w1, g + 1)
    }
  }
  for (; g < k4; ++g) {
    const __m512i w = PALI_QUAD_WEIGHTS(g);
    PALI_QUAD_ROWS4(c, w, g)
    PALI_QUAD_ROW(c, 4, w, g)
    PALI_QUAD_ROW(c, 5, w, g)
    PALI_QUAD_ROW(c, 6, w, g)
    PALI_QUAD_ROW(c, 7, w, g)
  }
#undef PALI_QUAD_WEIGHTS
  c0 = _mm512_add_epi32(_mm512_add_epi32(c0, d0), _mm512_add_epi32(e0, f0));
  c1 = _mm512_add_epi32(c1, d1);
  c2 = _mm512_add_epi32(c2, d2);
  // x was stored as qx + 128: take off 128 * sum_k qw.
  const __m512i correction = _mm512_loadu_si512(offset);
  PALI_QUAD_SAVE(0)
  PALI_QUAD_SAVE(1)
  PALI_QUAD_SAVE(2)
  PALI_QUAD_SAVE(3)
  PALI_QUAD_SAVE(4)
  PALI_QUAD_SAVE(5)
  PALI_QUAD_SAVE(6)
  PALI_QUAD_SAVE(7)
}

template <int MR>
PALI_TARGET_VNNI void quads_rows(const uint8_t* xq, int64_t ldq, const float* x_scales, const int8_t* wp,
                                 int64_t k4, const int32_t* offset, const RowOutput& o, float* y,
                                 int64_t ldy) {
  alignas(64) int32_t sums[8 * 16];
  quads_kernel<MR>(xq, ldq, wp, k4, offset, sums);
  for (int r = 0; r < MR; ++r) store_sums(sums + r * 16, x_scales[r], o, y + r * ldy);
}

constexpr int kQuadsMR = 8;

PALI_TARGET_VNNI void quads_block(const uint8_t* xq, int64_t ldq, const float* x_scales, int64_t rows,
                                  const int8_t* wp, int64_t k4, const int32_t* offset, const RowOutput& o,
                                  float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; r += kQuadsMR)
    dispatch_rows<kQuadsMR>(rows - r, [&](auto mr) {
      quads_rows<decltype(mr)::value>(xq + r * ldq, ldq, x_scales + r, wp, k4, offset, o, y + r * ldy, ldy);
    });
}

// ---------------------------------------------------------------------------
// AMX prefill: tiles 0-3 hold 32 rows x 32 outputs (two panels) of int32
// sums, 4-5 two 16-row slices of signed x (64 k each), 6-7 the same 64 k of
// two panels: 16 rows of [16 outputs][4 k], the packed layout. x is quantized
// with its rows zero-padded to whole tiles and 32 rows more than it has, so
// every load is in bounds and the padding adds zeros; a panel's last,
// partial tile is copied into zero-padded scratch (reading past the panel
// would add whatever lies there times those zeros: zero, but past the end of
// the weights it may not be mapped). Rows go in blocks whose x stays in L2
// while the panels pass over them. The integer sums are every kernel's.
#define PALI_TARGET_AMX_INT8 __attribute__((target("amx-tile,amx-int8")))

constexpr int64_t kAmxK = 64;           // k per tile row
constexpr int64_t kAmxRows = amx::kBlockRows;
constexpr int64_t kAmxRowBlock = 128;   // rows per pass over the panels

PALI_TARGET_AMX_INT8 void amx_block(const int8_t* xq, int64_t ld, const float* x_scales, int64_t r0, int64_t r1,
                                    const LinearWeight& w, int64_t p0, int64_t p1, float* y, int64_t ldy,
                                    bool accumulate) {
  amx::configure_tiles();
  const int64_t k_pad = w.packed_k(), tiles = ld / kAmxK, full = k_pad / kAmxK;
  const int8_t* packed = w.packed.data<int8_t>();
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const float* w_scales = w.scales.data<float>();
  alignas(64) int8_t tail[2][kAmxK * P];
  alignas(64) int32_t c[kAmxRows][2 * P];
  for (int64_t mb = r0; mb < r1; mb += kAmxRowBlock) {
    const int64_t me = std::min(r1, mb + kAmxRowBlock);
    for (int64_t p = p0; p < p1; p += 2) {
      const int np = p + 1 < p1 ? 2 : 1;
      const int8_t* b[2];
      RowOutput out[2];
      for (int q = 0; q < np; ++q) {
        b[q] = packed + (p + q) * k_pad * P;
        if (full < tiles) {
          const int64_t bytes = (k_pad - full * kAmxK) * P;
          std::memcpy(tail[q], b[q] + full * kAmxK * P, bytes);
          std::memset(tail[q] + bytes, 0, sizeof(tail[q]) - bytes);
        }
        out[q] = RowOutput{w_scales + (p + q) * P, bias ? bias + (p + q) * P : nullptr,
                           static_cast<int>(std::min<int64_t>(P, w.n - (p + q) * P)), accumulate};
      }
      const int second = np == 2 ? 1 : 0;
      for (int64_t m0 = mb; m0 < me; m0 += kAmxRows) {
        amx::zero_sums();
        const int8_t* a = xq + m0 * ld;
        for (int64_t t = 0; t < tiles; ++t) {
          _tile_loadd(4, a + t * kAmxK, ld);
          _tile_loadd(5, a + 16 * ld + t * kAmxK, ld);
          _tile_loadd(6, t < full ? b[0] + t * kAmxK * P : tail[0], 64);
          _tile_loadd(7, t < full ? b[second] + t * kAmxK * P : tail[second], 64);
          _tile_dpbssd(0, 4, 6);
          _tile_dpbssd(1, 4, 7);
          _tile_dpbssd(2, 5, 6);
          _tile_dpbssd(3, 5, 7);
        }
        amx::store_sums(c);
        const int64_t rows = std::min(kAmxRows, me - m0);
        for (int64_t r = 0; r < rows; ++r)
          for (int q = 0; q < np; ++q)
            store_sums(&c[r][q * P], x_scales[m0 + r], out[q], y + (m0 + r) * ldy + (p + q) * P);
      }
    }
  }
  _tile_release();
}

// The prefill (m > 8) on AMX: x quantized once for all threads, then threads
// over pairs of panels, or over rows when there are too few panels.
void run_amx(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
             bool accumulate) {
  const int64_t k = w.k, ld = (w.packed_k() + kAmxK - 1) / kAmxK * kAmxK;
  thread_local AlignedBuffer<int8_t> q_storage;
  thread_local AlignedBuffer<float> scale_storage;
  int8_t* xq = q_storage.get((m + kAmxRows) * ld);
  float* x_scales = scale_storage.get(m);
  std::memset(xq + m * ld, 0, kAmxRows * ld);
  parallel_for(0, m, std::max<int64_t>(1, 8192 / k), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) x_scales[r] = quantize_row(x + r * ldx, k, xq + r * ld, ld);
  });
  const int64_t pairs = (w.num_panels() + 1) / 2;
  if (pairs >= 4 * op_threads() || m <= kAmxRowBlock) {
    parallel_for(0, pairs, 1, [&](int64_t qb, int64_t qe) {
      amx_block(xq, ld, x_scales, 0, m, w, 2 * qb, std::min(w.num_panels(), 2 * qe), y, ldy, accumulate);
    });
  } else {
    parallel_for_aligned(0, m, kAmxRows, kAmxRows, [&](int64_t rb, int64_t re) {
      amx_block(xq, ld, x_scales, rb, re, w, 0, w.num_panels(), y, ldy, accumulate);
    });
  }
}

#endif

// ---------------------------------------------------------------------------
// The portable, NEON and NEON dot-product kernels: int8 x (qx, signed), the
// same integer sums, the build's one epilogue.

float quantize_row_portable(const float* x, int64_t k, int8_t* q, int64_t k_pad) {
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  for (int64_t i = 0; i < k; ++i) {
    const float v = std::nearbyint(x[i] / scale);
    q[i] = static_cast<int8_t>(std::isnan(v) ? -127 : static_cast<int>(std::min(127.0f, std::max(-127.0f, v))));
  }
  for (int64_t i = k; i < k_pad; ++i) q[i] = 0;
  return scale;
}

// The epilogue of every kernel of a build, so that all of them agree bit for
// bit: the AVX2 one on x86-64 (where its multiply-adds may be fused), plain C++ elsewhere.
void store_row_sums(const int32_t* sums, float x_scale, const RowOutput& o, float* y) {
#if defined(PALI_CPU_AVX2)
  store_sums(sums, x_scale, o, y);
#else
  for (int j = 0; j < o.nvalid; ++j) {
    float v = static_cast<float>(sums[j]) * (x_scale * o.w_scale[j]);
    if (o.bias) v += o.bias[j];
    y[j] = o.accumulate ? y[j] + v : v;
  }
#endif
}

void portable_block(const int8_t* xq, int64_t ldq, const float* x_scales, int64_t rows, const int8_t* wp,
                    int64_t k4, const RowOutput& o, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* xr = xq + r * ldq;
    int32_t sums[P] = {};
    for (int64_t g = 0; g < k4; ++g)
      for (int j = 0; j < P; ++j)
        for (int t = 0; t < 4; ++t) sums[j] += int32_t{xr[4 * g + t]} * int32_t{wp[g * 64 + j * 4 + t]};
    store_row_sums(sums, x_scales[r], o, y + r * ldy);
  }
}

#if defined(PALI_CPU_NEON)
// Default rounding (to nearest, ties to even), as cvtps2dq and nearbyint.
float quantize_row_neon(const float* x, int64_t k, int8_t* q, int64_t k_pad) {
  float32x4_t vmax = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= k; i += 4) vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(x + i)));
  float amax = vmaxvq_f32(vmax);
  for (; i < k; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  const float32x4_t vs = vdupq_n_f32(scale);
  const int32x4_t lo = vdupq_n_s32(-127), hi = vdupq_n_s32(127);
  const auto quantize4 = [&](const float* p) {
    const float32x4_t v = vdivq_f32(vld1q_f32(p), vs);
    // NaN converts to 0 here; the other kernels give it -127.
    const int32x4_t n = vbslq_s32(vceqq_f32(v, v), vcvtnq_s32_f32(v), lo);
    return vminq_s32(vmaxq_s32(n, lo), hi);
  };
  for (i = 0; i + 8 <= k; i += 8) {
    const int16x8_t words = vcombine_s16(vmovn_s32(quantize4(x + i)), vmovn_s32(quantize4(x + i + 4)));
    vst1_s8(q + i, vmovn_s16(words));
  }
  for (; i < k; ++i) {
    const float v = std::nearbyint(x[i] / scale);
    q[i] = static_cast<int8_t>(std::isnan(v) ? -127 : static_cast<int>(std::min(127.0f, std::max(-127.0f, v))));
  }
  for (; i < k_pad; ++i) q[i] = 0;
  return scale;
}

// The four bytes of x at k group g, in every 32-bit lane.
PALI_ALWAYS_INLINE int8x16_t broadcast_quad(const int8_t* xr, int64_t g) {
  int32_t quad;
  std::memcpy(&quad, xr + 4 * g, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(quad));
}

// Armv8.0 NEON: vmull_s8 multiplies 8 byte pairs into int16 (|q| <= 127, so no
// product overflows), vpadalq_s16 adds neighbouring pairs into int32 lanes, and
// one vpaddq_s32 at the end adds the two halves of each output's four k.
template <int MR>
void neon_rows(const int8_t* xq, int64_t ldq, const float* x_scales, const int8_t* wp, int64_t k4,
               const RowOutput& o, float* y, int64_t ldy) {
  int32x4_t lo[MR][4], hi[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int i = 0; i < 4; ++i) lo[r][i] = hi[r][i] = vdupq_n_s32(0);
  for (int64_t g = 0; g < k4; ++g) {
    int8x16_t w[4];
    for (int i = 0; i < 4; ++i) w[i] = vld1q_s8(wp + g * 64 + 16 * i);
    for (int r = 0; r < MR; ++r) {
      const int8x16_t xb = broadcast_quad(xq + r * ldq, g);
      for (int i = 0; i < 4; ++i) {
        lo[r][i] = vpadalq_s16(lo[r][i], vmull_s8(vget_low_s8(w[i]), vget_low_s8(xb)));
        hi[r][i] = vpadalq_s16(hi[r][i], vmull_high_s8(w[i], xb));
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    int32_t sums[P];
    for (int i = 0; i < 4; ++i) vst1q_s32(sums + 4 * i, vpaddq_s32(lo[r][i], hi[r][i]));
    store_row_sums(sums, x_scales[r], o, y + r * ldy);
  }
}

constexpr int kNeonMR = 2;  // 16 accumulators

void neon_block(const int8_t* xq, int64_t ldq, const float* x_scales, int64_t rows, const int8_t* wp, int64_t k4,
                const RowOutput& o, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; r += kNeonMR)
    dispatch_rows<kNeonMR>(rows - r, [&](auto mr) {
      neon_rows<decltype(mr)::value>(xq + r * ldq, ldq, x_scales + r, wp, k4, o, y + r * ldy, ldy);
    });
}

// Armv8.2 dot product: sdot adds four byte products into each int32 lane, one
// output's four k per lane. Compiled for the extension alone (the rest of the
// library stays Armv8.0) and called only where HWCAP_ASIMDDP says the CPU has it.
#define PALI_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

template <int MR>
PALI_TARGET_DOTPROD void dotprod_rows(const int8_t* xq, int64_t ldq, const float* x_scales, const int8_t* wp,
                                      int64_t k4, const RowOutput& o, float* y, int64_t ldy) {
  int32x4_t acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int i = 0; i < 4; ++i) acc[r][i] = vdupq_n_s32(0);
  for (int64_t g = 0; g < k4; ++g) {
    int8x16_t w[4];
    for (int i = 0; i < 4; ++i) w[i] = vld1q_s8(wp + g * 64 + 16 * i);
    for (int r = 0; r < MR; ++r) {
      int32_t quad;
      std::memcpy(&quad, xq + r * ldq + 4 * g, 4);
      const int8x16_t xb = vreinterpretq_s8_s32(vdupq_n_s32(quad));
      for (int i = 0; i < 4; ++i) acc[r][i] = vdotq_s32(acc[r][i], w[i], xb);
    }
  }
  for (int r = 0; r < MR; ++r) {
    int32_t sums[P];
    for (int i = 0; i < 4; ++i) vst1q_s32(sums + 4 * i, acc[r][i]);
    store_row_sums(sums, x_scales[r], o, y + r * ldy);
  }
}

constexpr int kDotprodMR = 4;  // 16 accumulators

void dotprod_block(const int8_t* xq, int64_t ldq, const float* x_scales, int64_t rows, const int8_t* wp,
                   int64_t k4, const RowOutput& o, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; r += kDotprodMR)
    dispatch_rows<kDotprodMR>(rows - r, [&](auto mr) {
      dotprod_rows<decltype(mr)::value>(xq + r * ldq, ldq, x_scales + r, wp, k4, o, y + r * ldy, ldy);
    });
}
#endif

// Each kernel as run() calls it: Q, the stored type of x; quantize, one row of x;
// block, rows of quantized x times one panel (offset: the panel's 128 * sum_k qw).
#if defined(PALI_CPU_AVX2)
struct Avx2Int8 {
  using Q = int8_t;
  static float quantize(const float* x, int64_t k, Q* q, int64_t k_pad) { return quantize_row(x, k, q, k_pad); }
  static void block(const Q* xq, int64_t ldq, const float* xs, int64_t rows, const int8_t* wp, int64_t k4,
                    const int32_t*, const RowOutput& o, float* y, int64_t ldy) {
    signed_block(xq, ldq, xs, rows, wp, k4, o, y, ldy);
  }
};
struct VnniInt8 {
  using Q = uint8_t;
  static float quantize(const float* x, int64_t k, Q* q, int64_t k_pad) { return quantize_row(x, k, q, k_pad); }
  static void block(const Q* xq, int64_t ldq, const float* xs, int64_t rows, const int8_t* wp, int64_t k4,
                    const int32_t* offset, const RowOutput& o, float* y, int64_t ldy) {
    quads_block(xq, ldq, xs, rows, wp, k4, offset, o, y, ldy);
  }
};
#endif
struct PortableInt8 {
  using Q = int8_t;
  static float quantize(const float* x, int64_t k, Q* q, int64_t k_pad) {
    return quantize_row_portable(x, k, q, k_pad);
  }
  static void block(const Q* xq, int64_t ldq, const float* xs, int64_t rows, const int8_t* wp, int64_t k4,
                    const int32_t*, const RowOutput& o, float* y, int64_t ldy) {
    portable_block(xq, ldq, xs, rows, wp, k4, o, y, ldy);
  }
};
#if defined(PALI_CPU_NEON)
struct NeonInt8 {
  using Q = int8_t;
  static float quantize(const float* x, int64_t k, Q* q, int64_t k_pad) { return quantize_row_neon(x, k, q, k_pad); }
  static void block(const Q* xq, int64_t ldq, const float* xs, int64_t rows, const int8_t* wp, int64_t k4,
                    const int32_t*, const RowOutput& o, float* y, int64_t ldy) {
    neon_block(xq, ldq, xs, rows, wp, k4, o, y, ldy);
  }
};
struct NeonDotprodInt8 {
  using Q = int8_t;
  static float quantize(const float* x, int64_t k, Q* q, int64_t k_pad) { return quantize_row_neon(x, k, q, k_pad); }
  static void block(const Q* xq, int64_t ldq, const float* xs, int64_t rows, const int8_t* wp, int64_t k4,
                    const int32_t*, const RowOutput& o, float* y, int64_t ldy) {
    dotprod_block(xq, ldq, xs, rows, wp, k4, o, y, ldy);
  }
};
#endif

// The driver of every kernel K (a struct above).
template <typename K>
void run(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
         bool accumulate) {
  using Q = typename K::Q;
  const int64_t k = w.k, k_pad = w.packed_k(), k4 = k_pad / 4;
  thread_local AlignedBuffer<Q> q_storage;
  thread_local AlignedBuffer<float> scale_storage;
  Q* xq = q_storage.get(m * k_pad);
  float* x_scales = scale_storage.get(m);
  const auto quantize_rows = [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) x_scales[r] = K::quantize(x + r * ldx, k, xq + r * k_pad, k_pad);
  };

  const int8_t* packed = w.packed.data<int8_t>();
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const float* w_scales = w.scales.data<float>();
  const int32_t* offsets = w.unsigned_offsets.data<int32_t>();
  const int64_t panels = w.num_panels();
  const auto panel_range = [&](int64_t pb, int64_t pe, int64_t rb, int64_t re) {
    for (int64_t p = pb; p < pe; ++p) {
      const int8_t* wp = packed + p * k_pad * P;
      const RowOutput o{w_scales + p * P, bias ? bias + p * P : nullptr,
                        static_cast<int>(std::min<int64_t>(P, w.n - p * P)), accumulate};
      float* yp = y + rb * ldy + p * P;
      K::block(xq + rb * k_pad, k_pad, x_scales + rb, re - rb, wp, k4, offsets + p * P, o, yp, ldy);
    }
  };
  const int threads = op_threads();
  if (m <= kLinearDecodeMaxRows) {
    // Decode: each weight is read once. Chunks of at least 512 KB of weights:
    // below that, starting a second thread and moving the rows' data between
    // cores costs about what it saves, and a lot more when the two cores are
    // far apart (another chip of a virtual machine's host).
    const int64_t grain = std::max<int64_t>(1, (512 << 10) / (k_pad * P));
    quantize_rows(0, m);
    parallel_for(0, panels, grain, [&](int64_t pb, int64_t pe) { panel_range(pb, pe, 0, m); });
  } else if (m >= kMinRowsPerThread * threads) {
    // Prefill: each thread its own rows, quantized and multiplied in one pass,
    // through all the weights. Norms split rows the same way, so a thread's
    // rows stay in its core's caches from one op to the next.
    parallel_for(0, m, kMinRowsPerThread, [&](int64_t rb, int64_t re) {
      quantize_rows(rb, re);
      panel_range(0, panels, rb, re);
    });
  } else {
    parallel_for(0, m, std::max<int64_t>(1, 8192 / k), quantize_rows);
    parallel_for(0, panels, 1, [&](int64_t pb, int64_t pe) { panel_range(pb, pe, 0, m); });
  }
}

}  // namespace

std::vector<std::string> int8_kernels_available() {
  std::vector<std::string> out;
  for (Int8Kernel k : kAllKernels)
    if (kernel_available(k)) out.push_back(kernel_name(k));
  return out;
}

std::string int8_kernel() { return kernel_name(active_kernel()); }

void set_int8_kernel(const std::string& name) {
  if (name.empty() || name == "auto") {
    forced_kernel.store(-1);
    return;
  }
  for (Int8Kernel k : kAllKernels)
    if (kernel_available(k) && name == kernel_name(k)) {
      forced_kernel.store(static_cast<int>(k));
      return;
    }
  std::string names;
  for (const auto& a : int8_kernels_available()) names += a + ", ";
  throw InvalidArgument(str_cat("int8 kernel '", name, "' is not available on this CPU (available: ", names,
                                "or auto)"));
}

void linear_int8_activations(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y,
                             int64_t ldy, bool accumulate) {
  switch (active_kernel()) {
#if defined(PALI_CPU_AVX2)
    case Int8Kernel::amx:
      if (m > kLinearDecodeMaxRows) {
        run_amx(x, ldx, m, w, y, ldy, accumulate);
        break;
      }
      [[fallthrough]];
    case Int8Kernel::avx512_vnni: run<VnniInt8>(x, ldx, m, w, y, ldy, accumulate); break;
    case Int8Kernel::avx2: run<Avx2Int8>(x, ldx, m, w, y, ldy, accumulate); break;
#endif
#if defined(PALI_CPU_NEON)
    case Int8Kernel::neon_dotprod: run<NeonDotprodInt8>(x, ldx, m, w, y, ldy, accumulate); break;
    case Int8Kernel::neon: run<NeonInt8>(x, ldx, m, w, y, ldy, accumulate); break;
#endif
    default: run<PortableInt8>(x, ldx, m, w, y, ldy, accumulate); break;
  }
}

float quantize_int8_symmetric(const float* x, int64_t k, int8_t* q, int64_t k_pad) {
#if defined(PALI_CPU_AVX2)
  return quantize_row(x, k, q, k_pad);
#else
  return quantize_row_portable(x, k, q, k_pad);
#endif
}

}  // namespace pali
