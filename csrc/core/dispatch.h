// Runs the CPU or the CUDA implementation of an op by the tensors' device.
//
//   PALI_DISPATCH_DEVICE(out.device(), layer_norm_cpu(x, w, b, out),
//                                      layer_norm_cuda(x, w, b, out));
//
// In a build without CUDA the CUDA expression is not compiled at all and asking
// for it raises "built without CUDA", so op headers may declare CUDA functions
// that only the CUDA build defines.
#pragma once

#include "core/device.h"
#include "core/error.h"

#ifdef PALI_WITH_CUDA
#define PALI_DISPATCH_DEVICE(device, cpu_expr, cuda_expr) \
  do {                                                    \
    if ((device) == ::pali::Device::cpu) {                \
      cpu_expr;                                           \
    } else {                                              \
      cuda_expr;                                          \
    }                                                     \
  } while (0)
#else
#define PALI_DISPATCH_DEVICE(device, cpu_expr, cuda_expr)                                    \
  do {                                                                                       \
    if ((device) == ::pali::Device::cpu) {                                                   \
      cpu_expr;                                                                              \
    } else {                                                                                 \
      throw ::pali::InvalidArgument(                                                         \
          "device 'cuda' requested but pali-engine was built without CUDA "                 \
          "(rebuild with PALI_ENGINE_CUDA=ON)");                                             \
    }                                                                                        \
  } while (0)
#endif
