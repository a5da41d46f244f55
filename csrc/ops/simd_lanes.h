// The portable and NEON kernels' vector helpers (internal to ops/*_cpu.cc).
//
// The portable and NEON paths of an op are one template over a "lanes" type:
// ScalarLanes (one float, plain C++, every architecture) or NeonLanes (four
// floats in a float32x4_t, aarch64). Each names the same few operations, so a
// kernel is written once and its two instantiations differ only in vector
// width: the portable one is the plain reference the NEON one is tested
// against. The x86 paths keep their own AVX2 code (ops/simd_avx2.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ops/cpu_kernels.h"

#if defined(PALI_CPU_NEON)
#include <arm_neon.h>
#endif

namespace pali::simd {

struct ScalarLanes {
  using V = float;
  static constexpr int kWidth = 1;
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V set1(float x) { return x; }
  static V zero() { return 0.0f; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V div(V a, V b) { return a / b; }
  // c + a * b
  static V fma(V a, V b, V c) { return c + a * b; }
  // b when either is NaN, as x86's maxps
  static V max(V a, V b) { return a > b ? a : b; }
  static float hsum(V v) { return v; }
  static float hmax(V v) { return v; }
  // |a| with the sign of b
  static V copysign(V a, V b) { return std::copysign(a, b); }
  // exp(x) with the vector kernels' contract: exactly 0 below -87.33 (and for
  // -inf and NaN), inputs above 88 clamped to exp(88).
  static V exp(V x) { return x >= -87.33f ? std::exp(x < 88.0f ? x : 88.0f) : 0.0f; }
};

#if defined(PALI_CPU_NEON)
struct NeonLanes {
  using V = float32x4_t;
  static constexpr int kWidth = 4;
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V zero() { return vdupq_n_f32(0.0f); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V div(V a, V b) { return vdivq_f32(a, b); }
  static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static V max(V a, V b) { return vmaxq_f32(a, b); }
  static float hsum(V v) { return vaddvq_f32(v); }
  static float hmax(V v) { return vmaxvq_f32(v); }
  static V copysign(V a, V b) { return vbslq_f32(vdupq_n_u32(0x80000000u), b, vabsq_f32(a)); }
  // The Cephes-style polynomial of the AVX2 kernels (about 2 ulp), same contract.
  static V exp(V x) {
    const uint32x4_t keep = vcgeq_f32(x, vdupq_n_f32(-87.33f));
    x = vminq_f32(x, vdupq_n_f32(88.0f));
    x = vmaxq_f32(x, vdupq_n_f32(-87.33f));
    const V fx = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5f), x, vdupq_n_f32(1.44269504088896341f)));
    x = vfmsq_f32(x, fx, vdupq_n_f32(0.693359375f));
    x = vfmsq_f32(x, fx, vdupq_n_f32(-2.12194440e-4f));
    V y = vdupq_n_f32(1.9875691500E-4f);
    y = vfmaq_f32(vdupq_n_f32(1.3981999507E-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(8.3334519073E-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(4.1665795894E-2f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.6666665459E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(5.0000001201E-1f), y, x);
    y = vfmaq_f32(vaddq_f32(x, vdupq_n_f32(1.0f)), y, vmulq_f32(x, x));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
    y = vmulq_f32(y, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), keep));
  }
};
#endif

// Runs f(NeonLanes{}) where the NEON path is chosen, else f(ScalarLanes{}).
// The AVX2 paths are chosen before this is reached (cpu_kernels() == simd on x86).
template <typename F>
inline void with_lanes(F&& f) {
#if defined(PALI_CPU_NEON)
  if (cpu_kernels() == CpuKernels::simd) {
    f(NeonLanes{});
    return;
  }
#endif
  f(ScalarLanes{});
}

// True where the AVX2 kernels run: an x86-64-v3 build without PALI_ENGINE_CPU_KERNELS=portable.
inline bool avx2_chosen() {
#if defined(PALI_CPU_AVX2)
  return cpu_kernels() == CpuKernels::simd;
#else
  return false;
#endif
}

// IEEE half bits to float, exactly (subnormals, infinities and NaN included),
// with integer arithmetic and two float operations instead of ldexp.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const auto from_bits = [](uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  };
  const float normalized = from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const float magnitude = two_w < (1u << 27) ? denormalized : normalized;
  uint32_t bits;
  std::memcpy(&bits, &magnitude, 4);
  return from_bits(sign | bits);
}

}  // namespace pali::simd
