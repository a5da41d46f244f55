// The instruction-set kernels of the float linear layers that live in files
// of their own (internal to ops/linear_*.cc): linear_cpu.cc chooses among
// them at run time (ops/linear.h, linear_kernel()).
#pragma once

#include <cstdint>

#include "ops/linear.h"

namespace pali::linear_avx512 {

#if defined(__x86_64__)
// AVX-512 F/BW/VL/DQ: what the kernels of linear_avx512.cc need.
bool cpu_has_avx512();
// And AVX-512 BF16 (vdpbf16ps), for the prefill of bf16 weights.
bool cpu_has_avx512_bf16();

// y (+)= x . Wᵀ + b for any weight format, row strides ldx and ldy; with
// bf16_dot the prefill of bf16 and i4 weights multiplies x rounded to
// bfloat16 (and i4's weights rounded to bfloat16; needs cpu_has_avx512_bf16()).
void linear(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy, bool accumulate,
            bool bf16_dot);
#endif

}  // namespace pali::linear_avx512
