// int4 weights times x quantized to int8 per row in blocks of 32 inputs,
// products summed in integers (W4A8, the scheme of llama.cpp's Q4_0 x Q8_0 dot
// product): the decode (m <= kLinearDecodeMaxRows) on every kernel, and the
// prefill on the AVX-512 kernels without AMX (2-2.6x the bfloat16 widening there).
//
// Why: widening each 4-bit code to float32 takes more instructions than the
// weight bytes take to stream, so the float decode of int4 ran at 3.3x its
// bandwidth floor on AVX2. In integers, one vpmaddubsw multiplies 32 codes by
// 32 activation bytes.
//
// The arithmetic, the same on every kernel (results agree bit for bit):
//   per row r and block b of 32 inputs (x past K counts as 0):
//     sx[r,b] = max |x| / 127 (1 for an all-zero block),
//     qx = round_half_even(x / sx) in [-127, 127] (NaN -> -127);
//   per output n: t = 0, then for each block b in order
//     t = fma(float(sum_k qx[k] * (u[n,k] - 8)), sx[r,b] * scale[g(b), n], t)
//   (u the stored nibble q + 8, g(b) the weight group holding block b); y = t + bias (+ y).
// The integer sum of a block is exact (|sum| <= 32 * 8 * 127), so only the
// float steps round, in one fixed order.
#pragma once

#include <cstdint>

#include "ops/linear.h"

namespace pali {

// Inputs per int8 block of x: every int4 group (32, 64, 128) is whole blocks.
constexpr int64_t kInt4ActivationBlock = 32;

enum class Int4DecodeKernel { avx512_vnni, avx512, avx2, portable };

// y[m, N] (+)= x[m, K] . Wᵀ + b for an i4 weight, any m, row strides ldx and ldy, on `kernel` (avx512 needs AVX-512 F/BW, avx512_vnni VNNI too, avx2
// an x86-64-v3 CPU; on other CPUs every kernel is the portable one).
void linear_int4_decode(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
                        bool accumulate, Int4DecodeKernel kernel);

}  // namespace pali
