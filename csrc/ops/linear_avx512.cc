// The AVX-512 kernels of the float linear layers (ops/linear.h), for every
// weight format: decode (m <= 8) streams each panel once with 16 outputs per
// 512-bit register; prefill is a 12 x 32 register-blocked GEMM over two panels
// at a time, on float32 slices (f32 weights as packed; the other formats
// widened one K block at a time) or, for bf16 and i4 weights where the CPU has
// AVX-512 BF16, on bfloat16 pairs (vdpbf16ps; x rounded to bfloat16, sums in
// float32): bf16 weights as packed (i4 weights take the W4A8 product instead,
// ops/linear_int4_decode.h, except on AMX).
// Where the CPU has AMX, that bfloat16 prefill can run on its tiles instead
// (TDPBF16PS on 32 x 32 blocks of the output: the packed [k2][16][2] panels
// are the tiles' VNNI layout as they are). The x86-64-v3 build compiles them with target attributes
// and linear_cpu.cc runs them only where cpuid reports the instructions, so
// the library still loads and runs on an AVX2-only CPU.
#include "ops/linear_kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/aligned_buffer.h"
#include "core/parallel.h"
#include "ops/amx_tiles.h"

// GCC 12 reports its own AVX-512 intrinsics' _mm512_undefined_ps() idiom, and
// step arrays that every load fills, as maybe uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace pali::linear_avx512 {

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
}

bool cpu_has_avx512_bf16() {
  static const bool has = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return has;
}

bool bf16_dot_outruns_fma() {
  static const bool outruns = cpu_has_avx512_bf16() && __builtin_cpu_is("amd");
  return outruns;
}

namespace {

// CPUID leaf 7's EDX bits of the AMX features.
constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;

unsigned amx_features() {
  static const unsigned features = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!cpu_has_avx512() || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || (edx & kAmxTile) == 0) return 0u;
    // Linux hands out the tiles' 8 KB of register state only to a process that asks.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return 0u;
    return edx & (kAmxBf16 | kAmxInt8);
  }();
  return features;
}

}  // namespace

bool cpu_has_amx_bf16() { return cpu_has_avx512_bf16() && (amx_features() & kAmxBf16) != 0; }

bool cpu_has_amx_int8() {
  return __builtin_cpu_supports("avx512vnni") && (amx_features() & kAmxInt8) != 0;
}

namespace {

constexpr int64_t P = kLinearPanel;
#define PALI_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define PALI_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
#define PALI_INLINE_AVX512 inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define PALI_INLINE_AVX512_BF16 \
  inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

// ---------------------------------------------------------------------------
// One step of a panel: kSpan consecutive k of its 16 outputs, kStepBytes of
// packed weights, as kSpan float vectors (i4: the integers q).
template <WeightFormat F>
struct Step;

template <>
struct Step<WeightFormat::f32> {
  static constexpr int kSpan = 1;
  static constexpr int64_t kStepBytes = 64;
  static PALI_INLINE_AVX512 void load(const unsigned char* p, __m512* v) {
    v[0] = _mm512_load_ps(reinterpret_cast<const float*>(p));
  }
};
template <>
struct Step<WeightFormat::f16> {
  static constexpr int kSpan = 1;
  static constexpr int64_t kStepBytes = 32;
  static PALI_INLINE_AVX512 void load(const unsigned char* p, __m512* v) {
    v[0] = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
  }
};
template <>
struct Step<WeightFormat::i8> {
  static constexpr int kSpan = 1;
  static constexpr int64_t kStepBytes = 16;
  static PALI_INLINE_AVX512 void load(const unsigned char* p, __m512* v) {
    v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p))));
  }
};
template <>
struct Step<WeightFormat::bf16> {
  static constexpr int kSpan = 2;
  static constexpr int64_t kStepBytes = 64;
  // Lane j holds output j's pair: the even k in the low 16 bits, the odd k in the high ones.
  static PALI_INLINE_AVX512 void load(const unsigned char* p, __m512* v) {
    const __m512i pair = _mm512_load_si512(p);
    v[0] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
    v[1] = _mm512_castsi512_ps(_mm512_and_si512(pair, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
};
struct Int4Step {
  static constexpr int kSpan = 2;
  static constexpr int64_t kStepBytes = 16;
  // q - 8 looked up by the code: vpermps reads only the low 4 bits of each
  // lane's index, so the low nibble needs no mask, and one lookup replaces a
  // conversion and a subtraction (decode is bound by these instructions, not
  // by the 4 bits per weight it reads).
  static PALI_INLINE_AVX512 void load(const unsigned char* p, __m512* v) {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
    const __m512 values = _mm512_setr_ps(-8.0f, -7.0f, -6.0f, -5.0f, -4.0f, -3.0f, -2.0f, -1.0f, 0.0f, 1.0f, 2.0f,
                                         3.0f, 4.0f, 5.0f, 6.0f, 7.0f);
    v[0] = _mm512_permutexvar_ps(bytes, values);
    v[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), values);
  }
};
template <> struct Step<WeightFormat::i4_g32> : Int4Step {};
template <> struct Step<WeightFormat::i4_g64> : Int4Step {};
template <> struct Step<WeightFormat::i4_g128> : Int4Step {};

// Where the output columns of one panel go: y = v * scale + bias (+ y), the
// first `nvalid` of them.
struct PanelOut {
  const float* scale;  // [16] or null
  const float* bias;   // [16] or null
  int nvalid;
  bool accumulate;
};

PALI_INLINE_AVX512 void store_row(__m512 v, float* y, const PanelOut& o) {
  if (o.scale) v = _mm512_mul_ps(v, _mm512_load_ps(o.scale));
  if (o.bias) v = _mm512_add_ps(v, _mm512_load_ps(o.bias));
  const __mmask16 mask = static_cast<__mmask16>((1u << o.nvalid) - 1);
  if (o.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y));
  _mm512_mask_storeu_ps(y, mask, v);
}

// ---------------------------------------------------------------------------
// Decode: MR (<= 8) rows of x times one whole panel, each group of K (i4) or
// all of K as one group summed on its own, then added times the group's
// float16 scales (i4) into the totals. Each k of a step has accumulators of
// its own, and below 3 rows two sets take alternate steps: the chains of
// dependent FMAs stay short enough to cover their latency.
template <WeightFormat F, int MR>
PALI_INLINE_AVX512 void gemv_panel(const float* x, int64_t ldx, const unsigned char* w, int64_t k, int64_t group,
                                   const uint16_t* gscale, float* y, int64_t ldy, const PanelOut& o) {
  using S = Step<F>;
  constexpr int kSets = MR <= 2 ? 2 : 1;
  constexpr int kSpan = S::kSpan;
  constexpr int kChains = kSets * kSpan;
  __m512 total[MR];
  for (int r = 0; r < MR; ++r) total[r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < k; g0 += group) {
    const int64_t ge = std::min(k, g0 + group);
    __m512 acc[kChains][MR];
    for (int c = 0; c < kChains; ++c)
      for (int r = 0; r < MR; ++r) acc[c][r] = _mm512_setzero_ps();
    int64_t kk = g0;
    const unsigned char* wk = w + (g0 / kSpan) * S::kStepBytes;
    for (; kk + kSets * kSpan <= ge; kk += kSets * kSpan, wk += kSets * S::kStepBytes) {
      for (int s = 0; s < kSets; ++s) {
        __m512 v[kSpan];
        S::load(wk + s * S::kStepBytes, v);
        for (int r = 0; r < MR; ++r)
          for (int h = 0; h < kSpan; ++h)
            acc[s * kSpan + h][r] =
                _mm512_fmadd_ps(_mm512_set1_ps(x[r * ldx + kk + s * kSpan + h]), v[h], acc[s * kSpan + h][r]);
      }
    }
    for (; kk < ge; kk += kSpan, wk += S::kStepBytes) {  // the steps left; x past the group's end counts as 0
      __m512 v[kSpan];
      S::load(wk, v);
      for (int r = 0; r < MR; ++r)
        for (int h = 0; h < kSpan; ++h)
          if (kk + h < ge) acc[h][r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * ldx + kk + h]), v[h], acc[h][r]);
    }
    __m512 scale = _mm512_set1_ps(1.0f);
    if (gscale) scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gscale + (g0 / group) * P)));
    for (int r = 0; r < MR; ++r) {
      __m512 sum = acc[0][r];
      for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, acc[c][r]);
      total[r] = gscale ? _mm512_fmadd_ps(sum, scale, total[r]) : _mm512_add_ps(total[r], sum);
    }
  }
  for (int r = 0; r < MR; ++r) store_row(total[r], y + r * ldy, o);
}

// gemv_panel for min(rows, MR) rows (lambdas would not inherit the target attribute).
template <WeightFormat F, int MR>
PALI_INLINE_AVX512 void gemv_rows(int64_t rows, const float* x, int64_t ldx, const unsigned char* w, int64_t k,
                                  int64_t group, const uint16_t* gscale, float* y, int64_t ldy, const PanelOut& o) {
  if constexpr (MR == 1) {
    gemv_panel<F, 1>(x, ldx, w, k, group, gscale, y, ldy, o);
  } else {
    if (rows >= MR)
      gemv_panel<F, MR>(x, ldx, w, k, group, gscale, y, ldy, o);
    else
      gemv_rows<F, MR - 1>(rows, x, ldx, w, k, group, gscale, y, ldy, o);
  }
}

template <WeightFormat F>
PALI_AVX512 void gemv_panels(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, int64_t pb, int64_t pe,
                             float* y, int64_t ldy, bool accumulate) {
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const float* oscale = F == WeightFormat::i8 ? w.scales.data<float>() : nullptr;
  for (int64_t p = pb; p < pe; ++p) {
    const PanelOut o{oscale ? oscale + p * P : nullptr, bias ? bias + p * P : nullptr,
                     static_cast<int>(std::min<int64_t>(P, w.n - p * P)), accumulate};
    for (int64_t r0 = 0; r0 < m; r0 += 8)
      gemv_rows<F, 8>(m - r0, x + r0 * ldx, ldx, w.panel(p), w.k, w.sum_group(), w.group_scales(p),
                      y + r0 * ldy + p * P, ldy, o);
  }
}

template <WeightFormat F>
void gemv(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy, bool accumulate) {
  // Chunks of at least 64 KB of weights.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(w.panel_bytes(), 1));
  parallel_for(0, w.num_panels(), grain, [&](int64_t pb, int64_t pe) {
    gemv_panels<F>(x, ldx, m, w, pb, pe, y, ldy, accumulate);
  });
}

// ---------------------------------------------------------------------------
// Prefill on float32 slices: c[MR, 16 * NP] (+)= a[MR, kc] . [b0 | b1][kc, 16 * NP].
// mode 0: c = acc + bias; 1: c += acc + bias; 2: c += acc (a later K block).
constexpr int64_t kMR = 12;
constexpr int64_t kKC = 256;  // K block: two 16 x 256 float slices (32 KB) stay in L1/L2
constexpr int64_t kMC = 96;   // M block: 96 rows of x stay in L2

template <int MR, int NP>
PALI_INLINE_AVX512 void micro_f32(const float* a, int64_t lda, const float* const* b, int64_t kc, float* c,
                                  int64_t ldc, const PanelOut* out, int mode) {
  __m512 acc[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_setzero_ps();
  const float* b0 = b[0];
  const float* b1 = b[NP - 1];
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m512 w0 = _mm512_load_ps(b0 + kk * P);
    const __m512 w1 = _mm512_load_ps(b1 + kk * P);
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(a[r * lda + kk]);
      acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
      if constexpr (NP == 2) acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  for (int q = 0; q < NP; ++q) {
    PanelOut o = out[q];
    if (mode == 2) o.bias = nullptr;
    o.accumulate = mode != 0;
    for (int r = 0; r < MR; ++r) store_row(acc[r][q], c + r * ldc + q * P, o);
  }
}

template <int MR, int NP>
PALI_INLINE_AVX512 void micro_f32_rows(int64_t rows, const float* a, int64_t lda, const float* const* b, int64_t kc,
                                       float* c, int64_t ldc, const PanelOut* out, int mode) {
  if constexpr (MR == 1) {
    micro_f32<1, NP>(a, lda, b, kc, c, ldc, out, mode);
  } else {
    if (rows >= MR)
      micro_f32<MR, NP>(a, lda, b, kc, c, ldc, out, mode);
    else
      micro_f32_rows<MR - 1, NP>(rows, a, lda, b, kc, c, ldc, out, mode);
  }
}

// The [kc, 16] float32 slice of panel p at k0 (a multiple of kKC, so of every
// i4 group): a pointer into the packed weights (f32), else widened into
// `scratch` with the i8/i4 scales applied.
template <WeightFormat F>
PALI_INLINE_AVX512 const float* slice_f32(const LinearWeight& w, int64_t p, int64_t k0, int64_t kc, float* scratch) {
  using S = Step<F>;
  const unsigned char* panel = w.panel(p);
  if constexpr (F == WeightFormat::f32) {
    return reinterpret_cast<const float*>(panel) + k0 * P;
  } else {
    const int64_t group = is_int4(F) ? int4_group_size(F) : 0;
    const uint16_t* gscales = w.group_scales(p);
    __m512 scale = F == WeightFormat::i8 ? _mm512_load_ps(w.scales.data<float>() + p * P) : _mm512_set1_ps(1.0f);
    for (int64_t kk = 0; kk < kc; kk += S::kSpan) {
      if (group && (k0 + kk) % group == 0)
        scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gscales + ((k0 + kk) / group) * P)));
      __m512 v[S::kSpan];
      S::load(panel + ((k0 + kk) / S::kSpan) * S::kStepBytes, v);
      for (int h = 0; h < S::kSpan; ++h)
        if (kk + h < kc) _mm512_store_ps(scratch + (kk + h) * P, F == WeightFormat::f16 || F == WeightFormat::bf16 ? v[h] : _mm512_mul_ps(v[h], scale));
    }
    return scratch;
  }
}

// Rows [r0, r1) x panels [p0, p1) of the product, two panels at a time.
template <WeightFormat F>
PALI_AVX512 void gemm_block(const float* x, int64_t ldx, int64_t r0, int64_t r1, const LinearWeight& w, int64_t p0,
                            int64_t p1, float* y, int64_t ldy, bool accumulate) {
  alignas(64) float scratch[2][kKC * P];
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const int64_t k = w.k;
  for (int64_t mb = r0; mb < r1; mb += kMC) {
    const int64_t me = std::min(r1, mb + kMC);
    for (int64_t p = p0; p < p1; p += 2) {
      const int np = p + 1 < p1 ? 2 : 1;
      PanelOut out[2];
      for (int q = 0; q < np; ++q)
        out[q] = PanelOut{nullptr, bias ? bias + (p + q) * P : nullptr,
                          static_cast<int>(std::min<int64_t>(P, w.n - (p + q) * P)), accumulate};
      for (int64_t k0 = 0; k0 < k; k0 += kKC) {
        const int64_t kc = std::min(kKC, k - k0);
        const float* b[2];
        for (int q = 0; q < np; ++q) b[q] = slice_f32<F>(w, p + q, k0, kc, scratch[q]);
        const int mode = k0 > 0 ? 2 : (accumulate ? 1 : 0);
        for (int64_t m0 = mb; m0 < me; m0 += kMR) {
          const float* a = x + m0 * ldx + k0;
          float* c = y + m0 * ldy + p * P;
          if (np == 2)
            micro_f32_rows<kMR, 2>(me - m0, a, ldx, b, kc, c, ldy, out, mode);
          else
            micro_f32_rows<kMR, 1>(me - m0, a, ldx, b, kc, c, ldy, out, mode);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Prefill of bf16 weights on AVX-512 BF16: x rounded to bfloat16 pairs (one
// 32-bit word per two k, as the weights are), c (+)= a . b with vdpbf16ps.

// Rows [0, rows) of x, columns [0, k), as bfloat16 pairs [rows][ld] (the first ceil(k / 2) words of each row).
PALI_AVX512_BF16 void pack_bf16_pairs(const float* x, int64_t ldx, int64_t rows, int64_t k, uint32_t* out,
                                      int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    uint32_t* o = out + r * ld;
    int64_t kk = 0;
    for (; kk + 32 <= k; kk += 32) {
      const __m512bh pairs = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + kk + 16), _mm512_loadu_ps(xr + kk));
      _mm512_storeu_si512(o + kk / 2, (__m512i)pairs);
    }
    if (kk < k) {
      const int64_t left = k - kk;
      const __mmask16 lo = static_cast<__mmask16>(left >= 16 ? 0xFFFF : (1u << left) - 1);
      const __mmask16 hi = static_cast<__mmask16>(left <= 16 ? 0 : (1u << (left - 16)) - 1);
      const __m512bh pairs = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, xr + kk + 16), _mm512_maskz_loadu_ps(lo, xr + kk));
      const __mmask16 words = static_cast<__mmask16>((1u << ((left + 1) / 2)) - 1);
      _mm512_mask_storeu_epi32(o + kk / 2, words, (__m512i)pairs);
    }
  }
}

template <int MR, int NP>
PALI_INLINE_AVX512_BF16 void micro_bf16(const uint32_t* a, int64_t lda, const unsigned char* const* b, int64_t kp, float* c, int64_t ldc,
           const PanelOut* out, int mode) {
  __m512 acc[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_setzero_ps();
  const unsigned char* b0 = b[0];
  const unsigned char* b1 = b[NP - 1];
  for (int64_t i = 0; i < kp; ++i) {
    const __m512i w0 = _mm512_load_si512(b0 + i * 64);
    const __m512i w1 = _mm512_load_si512(b1 + i * 64);
    for (int r = 0; r < MR; ++r) {
      const __m512i xv = _mm512_set1_epi32(static_cast<int>(a[r * lda + i]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)xv, (__m512bh)w0);
      if constexpr (NP == 2)
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)xv, (__m512bh)w1);
    }
  }
  for (int q = 0; q < NP; ++q) {
    PanelOut o = out[q];
    if (mode == 2) o.bias = nullptr;
    o.accumulate = mode != 0;
    for (int r = 0; r < MR; ++r) store_row(acc[r][q], c + r * ldc + q * P, o);
  }
}

template <int MR, int NP>
PALI_INLINE_AVX512_BF16 void micro_bf16_rows(int64_t rows, const uint32_t* a, int64_t lda,
                                             const unsigned char* const* b, int64_t kp, float* c, int64_t ldc,
                                             const PanelOut* out, int mode) {
  if constexpr (MR == 1) {
    micro_bf16<1, NP>(a, lda, b, kp, c, ldc, out, mode);
  } else {
    if (rows >= MR)
      micro_bf16<MR, NP>(a, lda, b, kp, c, ldc, out, mode);
    else
      micro_bf16_rows<MR - 1, NP>(rows, a, lda, b, kp, c, ldc, out, mode);
  }
}

// The [kp pairs, 16] bfloat16-pair slice of panel p at pair q0 (a multiple of
// kKC / 2, so of every i4 group): a pointer into the packed weights (bf16),
// else i4's q * scale rounded to bfloat16 and interleaved into `scratch`.
template <WeightFormat F>
PALI_INLINE_AVX512_BF16 const unsigned char* slice_bf16_pairs(const LinearWeight& w, int64_t p, int64_t q0,
                                                              int64_t kp, uint32_t* scratch) {
  const unsigned char* panel = w.panel(p);
  if constexpr (F == WeightFormat::bf16) {
    return panel + q0 * 64;
  } else {
    const int64_t group = int4_group_size(F);
    const uint16_t* gscales = w.group_scales(p);
    // [e0..e15 | o0..o15] -> (e_j, o_j) in 32-bit lane j.
    alignas(64) static constexpr uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                             21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                             11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i interleave = _mm512_load_si512(kInterleave);
    __m512 scale = _mm512_setzero_ps();
    for (int64_t i = 0; i < kp; ++i) {
      const int64_t kk = 2 * (q0 + i);
      if (kk % group == 0)
        scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gscales + (kk / group) * P)));
      __m512 v[2];
      Step<F>::load(panel + (q0 + i) * Step<F>::kStepBytes, v);
      const __m512bh halves = _mm512_cvtne2ps_pbh(_mm512_mul_ps(v[1], scale), _mm512_mul_ps(v[0], scale));
      _mm512_store_si512(scratch + i * P, _mm512_permutexvar_epi16(interleave, (__m512i)halves));
    }
    return reinterpret_cast<const unsigned char*>(scratch);
  }
}

// Rows [r0, r1) x panels [p0, p1) of the product, from x packed as bfloat16
// pairs ([m][k2], pack_bf16_pairs) once for all threads.
template <WeightFormat F>
PALI_AVX512_BF16 void gemm_block_bf16(const uint32_t* pairs, int64_t r0, int64_t r1, const LinearWeight& w,
                                      int64_t p0, int64_t p1, float* y, int64_t ldy, bool accumulate) {
  constexpr int64_t kKP = kKC / 2;  // pairs per K block
  alignas(64) uint32_t scratch[2][kKP * P];
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const int64_t k2 = (w.k + 1) / 2;
  for (int64_t mb = r0; mb < r1; mb += kMC) {
    const int64_t me = std::min(r1, mb + kMC);
    for (int64_t p = p0; p < p1; p += 2) {
      const int np = p + 1 < p1 ? 2 : 1;
      PanelOut out[2];
      for (int q = 0; q < np; ++q)
        out[q] = PanelOut{nullptr, bias ? bias + (p + q) * P : nullptr,
                          static_cast<int>(std::min<int64_t>(P, w.n - (p + q) * P)), accumulate};
      for (int64_t q0 = 0; q0 < k2; q0 += kKP) {
        const int64_t kp = std::min(kKP, k2 - q0);
        const unsigned char* b[2];
        for (int q = 0; q < np; ++q) b[q] = slice_bf16_pairs<F>(w, p + q, q0, kp, scratch[q]);
        if (np == 1) b[1] = b[0];
        const int mode = q0 > 0 ? 2 : (accumulate ? 1 : 0);
        for (int64_t m0 = mb; m0 < me; m0 += kMR) {
          const uint32_t* am = pairs + m0 * k2 + q0;
          float* c = y + m0 * ldy + p * P;
          if (np == 2)
            micro_bf16_rows<kMR, 2>(me - m0, am, k2, b, kp, c, ldy, out, mode);
          else
            micro_bf16_rows<kMR, 1>(me - m0, am, k2, b, kp, c, ldy, out, mode);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Prefill of bf16 (and i4) weights on AMX: tiles 0-3 hold a 32 x 32 block of
// the output in float32, 4-5 two 16-row slices of x's bfloat16 pairs (16
// pairs = 32 k each), 6-7 the same 16 pairs of two panels, which the packed
// [k2][16][2] layout stores as a tile's rows (64 bytes: 16 outputs x 2 k).
// Blocks of K and of rows keep the slice of x that the panels pass over in
// L2. x is packed with its pairs zero-padded to whole tiles (kAmxPairs) and 32
// rows more than it has, so every tile load is in bounds and the padding
// adds zeros; a panel's last, partial tile of pairs (and all of an i4
// panel, widened to bfloat16 pairs) is copied into zero-padded scratch,
// since reading past a panel would multiply those zeros by whatever lies
// there (0 x NaN is NaN).

constexpr int64_t kAmxPairs = 16;  // pairs per tile row of x: 32 k, 64 bytes
constexpr int64_t kAmxRows = amx::kBlockRows;
constexpr int64_t kAmxBlockTiles = 80;  // at most this many tiles (2560 k) of K per block
constexpr int64_t kAmxRowBlock = 256;   // rows per pass of the panels: x's block (<= 1.3 MB) stays in L2

#define PALI_AMX \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

template <WeightFormat F>
PALI_AMX void gemm_block_amx(const uint32_t* pairs, int64_t ld, int64_t r0, int64_t r1, const LinearWeight& w,
                             int64_t p0, int64_t p1, float* y, int64_t ldy, bool accumulate) {
  amx::configure_tiles();
  const int64_t k2 = (w.k + 1) / 2;
  const int64_t tiles = ld / kAmxPairs;
  // K in blocks of whole i4 groups (4 tiles = 128 k) short enough that the
  // block's slices of x's rows stay in L2 while the panels pass over them.
  const int64_t blocks = (tiles + kAmxBlockTiles - 1) / kAmxBlockTiles;
  const int64_t per_block = ((tiles + blocks - 1) / blocks + 3) / 4 * 4;
  const int64_t full = F == WeightFormat::bf16 ? k2 / kAmxPairs : 0;  // tiles read from the panel in place
  thread_local AlignedBuffer<uint32_t> scratch_storage;
  uint32_t* scratch = scratch_storage.get(2 * per_block * kAmxPairs * P);
  alignas(64) float c[kAmxRows][2 * P];
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  for (int64_t t0 = 0; t0 < tiles; t0 += per_block) {
    const int64_t t1 = std::min(tiles, t0 + per_block);
    const int64_t own0 = std::max(t0, full);  // the block's first tile from scratch
    for (int64_t mb = r0; mb < r1; mb += kAmxRowBlock) {
      const int64_t me = std::min(r1, mb + kAmxRowBlock);
      for (int64_t p = p0; p < p1; p += 2) {
        const int np = p + 1 < p1 ? 2 : 1;
        const void* tile[2][kAmxBlockTiles + 4];
        for (int q = 0; q < np; ++q) {
          uint32_t* own = scratch + q * per_block * kAmxPairs * P;
          const int64_t first = own0 * kAmxPairs;
          const int64_t copied = std::max<int64_t>(0, std::min(k2, t1 * kAmxPairs) - first);
          if (own0 < t1) {
            if constexpr (F == WeightFormat::bf16)
              std::memcpy(own, w.panel(p + q) + first * 64, copied * 64);
            else
              slice_bf16_pairs<F>(w, p + q, first, copied, own);
            std::memset(own + copied * P, 0, ((t1 - own0) * kAmxPairs - copied) * 64);
          }
          for (int64_t t = t0; t < t1; ++t)
            tile[q][t - t0] = t < own0 ? static_cast<const void*>(w.panel(p + q) + t * kAmxPairs * 64)
                                       : static_cast<const void*>(own + (t - own0) * kAmxPairs * P);
        }
        if (np == 1)
          for (int64_t t = t0; t < t1; ++t) tile[1][t - t0] = tile[0][t - t0];
        PanelOut out[2];
        for (int q = 0; q < np; ++q)
          out[q] = PanelOut{nullptr, bias && t0 == 0 ? bias + (p + q) * P : nullptr,
                            static_cast<int>(std::min<int64_t>(P, w.n - (p + q) * P)), accumulate || t0 > 0};
        for (int64_t m0 = mb; m0 < me; m0 += kAmxRows) {
          amx::zero_sums();
          const uint32_t* a = pairs + m0 * ld;
          for (int64_t t = t0; t < t1; ++t) {
            _tile_loadd(4, a + t * kAmxPairs, ld * 4);
            _tile_loadd(5, a + 16 * ld + t * kAmxPairs, ld * 4);
            _tile_loadd(6, tile[0][t - t0], 64);
            _tile_loadd(7, tile[1][t - t0], 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          amx::store_sums(c);
          const int64_t rows = std::min(kAmxRows, me - m0);
          for (int64_t r = 0; r < rows; ++r)
            for (int q = 0; q < np; ++q)
              store_row(_mm512_load_ps(&c[r][q * P]), y + (m0 + r) * ldy + (p + q) * P, out[q]);
        }
      }
    }
  }
  _tile_release();
}

// Threads over pairs of panels, or over rows when there are too few panels:
// block(r0, r1, p0, p1) computes rows [r0, r1) x panels [p0, p1).
template <typename Block>
void split_gemm(int64_t m, const LinearWeight& w, Block&& block) {
  const int64_t pairs = (w.num_panels() + 1) / 2;
  const int threads = op_threads();
  if (pairs >= 4 * threads || m <= kMC) {
    parallel_for(0, pairs, 1, [&](int64_t qb, int64_t qe) {
      block(0, m, 2 * qb, std::min(w.num_panels(), 2 * qe));
    });
  } else {
    parallel_for_aligned(0, m, kMR, kMR, [&](int64_t rb, int64_t re) { block(rb, re, 0, w.num_panels()); });
  }
}

template <WeightFormat F>
void run(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy, bool accumulate,
         Bf16Prefill bf16_prefill) {
  const bool bf16_pairs = F == WeightFormat::bf16 || is_int4(F);
  if (m <= kLinearDecodeMaxRows) {
    gemv<F>(x, ldx, m, w, y, ldy, accumulate);
  } else if (bf16_pairs && bf16_prefill == Bf16Prefill::amx) {
    // x as bfloat16 pairs, zero-padded to whole tiles and kAmxRows rows more.
    thread_local AlignedBuffer<uint32_t> pairs_storage;
    const int64_t ld = ((w.k + 1) / 2 + kAmxPairs - 1) / kAmxPairs * kAmxPairs;
    uint32_t* pairs = pairs_storage.get((m + kAmxRows) * ld);
    std::memset(pairs + m * ld, 0, kAmxRows * ld * 4);
    parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(w.k, 1)), [&](int64_t rb, int64_t re) {
      pack_bf16_pairs(x + rb * ldx, ldx, re - rb, w.k, pairs + rb * ld, ld);
      const int64_t k2 = (w.k + 1) / 2;
      for (int64_t r = rb; r < re; ++r) std::memset(pairs + r * ld + k2, 0, (ld - k2) * 4);
    });
    split_gemm(m, w, [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
      gemm_block_amx<F>(pairs, ld, r0, r1, w, p0, p1, y, ldy, accumulate);
    });
  } else if (bf16_pairs && bf16_prefill == Bf16Prefill::avx512_bf16) {
    // x as bfloat16 pairs once, then every block reads them.
    thread_local AlignedBuffer<uint32_t> pairs_storage;
    const int64_t k2 = (w.k + 1) / 2;
    uint32_t* pairs = pairs_storage.get(m * k2);
    parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(w.k, 1)), [&](int64_t rb, int64_t re) {
      pack_bf16_pairs(x + rb * ldx, ldx, re - rb, w.k, pairs + rb * k2, k2);
    });
    split_gemm(m, w, [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
      gemm_block_bf16<F>(pairs, r0, r1, w, p0, p1, y, ldy, accumulate);
    });
  } else {
    split_gemm(m, w, [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
      gemm_block<F>(x, ldx, r0, r1, w, p0, p1, y, ldy, accumulate);
    });
  }
}

}  // namespace

void linear(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy, bool accumulate,
            Bf16Prefill bf16_prefill) {
  switch (w.format) {
    case WeightFormat::f32: run<WeightFormat::f32>(x, ldx, m, w, y, ldy, accumulate, bf16_prefill); break;
    case WeightFormat::f16: run<WeightFormat::f16>(x, ldx, m, w, y, ldy, accumulate, bf16_prefill); break;
    case WeightFormat::bf16: run<WeightFormat::bf16>(x, ldx, m, w, y, ldy, accumulate, bf16_prefill); break;
    case WeightFormat::i8: run<WeightFormat::i8>(x, ldx, m, w, y, ldy, accumulate, bf16_prefill); break;
    case WeightFormat::i4_g32: run<WeightFormat::i4_g32>(x, ldx, m, w, y, ldy, accumulate, bf16_prefill); break;
    case WeightFormat::i4_g64: run<WeightFormat::i4_g64>(x, ldx, m, w, y, ldy, accumulate, bf16_prefill); break;
    case WeightFormat::i4_g128: run<WeightFormat::i4_g128>(x, ldx, m, w, y, ldy, accumulate, bf16_prefill); break;
  }
}

}  // namespace pali::linear_avx512

#endif  // __x86_64__
