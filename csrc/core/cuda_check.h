// Turns CUDA and cuBLAS error codes into exceptions that say what failed and where.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

#define PALI_CUDA_CHECK(expr)                                                                \
  do {                                                                                       \
    const cudaError_t pali_status_ = (expr);                                                 \
    if (pali_status_ != cudaSuccess)                                                         \
      throw ::pali::RuntimeFailure(::pali::str_cat(#expr, " failed: ",                     \
                                                   cudaGetErrorString(pali_status_), " (", \
                                                   __FILE__, ":", __LINE__, ")"));          \
  } while (0)
