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
// Whether vdpbf16ps multiplies faster than FMAs on bfloat16 widened to
// float32: on AMD's Zen 4 it runs at twice the FMA rate; on an Intel Xeon with
// AVX-512 BF16 and no AMX the widening ran 1.3-1.6x faster (docs/ops.md).
bool bf16_dot_outruns_fma();
// And AMX tiles with bfloat16 products (TDPBF16PS), the operating system
// letting this process use them (asked once, arch_prctl ARCH_REQ_XCOMP_PERM).
bool cpu_has_amx_bf16();
// And AMX tiles with int8 products (TDPBSSD), for the W8A8 prefill
// (ops/linear_int8_cpu.cc), with AVX-512 VNNI for its decode.
bool cpu_has_amx_int8();

// How the prefill of bf16 and i4 weights multiplies: widened to float32
// (FMA), as bfloat16 pairs in vectors (vdpbf16ps), or as bfloat16 pairs in
// AMX tiles (TDPBF16PS); both bfloat16 ways round x (and i4's q * scale) to
// bfloat16 and sum in float32.
enum class Bf16Prefill { none, avx512_bf16, amx };

// y (+)= x . Wᵀ + b for any weight format, row strides ldx and ldy; the
// prefill of bf16 and i4 weights as `bf16_prefill` says (avx512_bf16 needs
// cpu_has_avx512_bf16(), amx cpu_has_amx_bf16()).
void linear(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy, bool accumulate,
            Bf16Prefill bf16_prefill);
#endif

}  // namespace pali::linear_avx512
