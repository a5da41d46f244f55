// CUDA activations: tanh-GELU (and SiLU, ReLU), and the gated FFN activation
// act(gate) * up (see ops/activations.h).
#pragma once
#ifdef PALI_WITH_CUDA

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "ops/activations.h"

namespace pali {

// y[n] = act(x[n]) on device memory in `dtype` (y may equal x).
void activation_cuda(const void* x, void* y, int64_t n, Activation act, DType dtype,
                     cudaStream_t stream = nullptr);

// in: device [m, 2f] (gate | up, as ops/activations.h), out: device [m, f] =
// act(gate) * up, both in `dtype`; out must not overlap in.
void gated_activation_cuda(const void* in, int64_t m, int64_t f, void* out, Activation act,
                           DType dtype, cudaStream_t stream = nullptr);

}  // namespace pali

#endif  // PALI_WITH_CUDA
