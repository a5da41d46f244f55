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

// x[0, k) as W8A8 quantizes a row: scale = max|x| / 127 (1 for all zeros), q =
// round_half_even(x / scale) in [-127, 127] (NaN -> -127), q[k, k_pad) = 0.
// Returns the scale. The same bits on every kernel; the int4 decode
// (ops/linear_int4_decode.h) quantizes its blocks of x with it.
float quantize_int8_symmetric(const float* x, int64_t k, int8_t* q, int64_t k_pad);

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
