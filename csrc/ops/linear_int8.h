// Int8 linear layers with int8 activations (W8A8): the prefill path of
// LinearWeight::int8_activations, and the choice of its integer kernel.
// See ops/linear_int8_cpu.cc for the arithmetic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/linear.h"

namespace pali {

// y[m, N] (+)= dequant(quant(x) · qWᵀ) + b for an i8 weight; row strides ldx, ldy.
void linear_int8_activations(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y,
                             int64_t ldy, bool accumulate);

// The integer kernels this CPU runs: on x86-64 "avx2" always, "avx512_vnni"
// where present; on aarch64 "neon" always, "neon_dotprod" where the CPU has the
// Armv8.2 dot product; "portable" everywhere (last in the list).
std::vector<std::string> int8_kernels_available();
// The kernel in use: the best available unless set_int8_kernel() chose one
// ("portable" when PALI_ENGINE_CPU_KERNELS=portable chose every op's portable path).
std::string int8_kernel();
// Chooses the kernel for the whole process ("auto": the best); both give the
// same results bit for bit, so this is for tests and benchmarks. Throws
// InvalidArgument for a name this CPU does not run.
void set_int8_kernel(const std::string& name);

}  // namespace pali
