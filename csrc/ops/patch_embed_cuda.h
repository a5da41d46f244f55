// CUDA ViT patch embedding: normalize + patchify (one kernel, which also
// writes bias + position embedding into the output), then one cuBLAS GEMM that
// adds patches · Wᵀ into it (see ops/patch_embed.h for the layouts).
#pragma once
#ifdef PALI_WITH_CUDA

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace pali {

enum class PixelFormat : uint8_t {
  u8_hwc,   // uint8 [B, S, S, C], normalized on the fly: (p / 255 - mean[c]) / std[c]
  f32_chw,  // float32 [B, C, S, S]; normalized as (p - mean[c]) / std[c] when mean/std are given
};

struct PatchEmbedCudaParams {
  const void* pixels = nullptr;  // device
  PixelFormat format = PixelFormat::u8_hwc;
  int64_t batch = 1, channels = 3, image_size = 224, patch = 14;
  // Per-channel normalization (host values, at most 8 channels); identity when
  // `normalize` is false (f32_chw only; u8_hwc always normalizes).
  bool normalize = true;
  float mean[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  float std[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  // Device, in `dtype`: weight [W, C*P*P] (the conv weight [W, C, P, P]
  // reshaped), bias [W] or null, pos_embed [N, W] (N = (S/P)^2) or null.
  const void* weight = nullptr;
  const void* bias = nullptr;
  const void* pos_embed = nullptr;
  int64_t width = 0;  // W
  void* out = nullptr;  // device [B, N, W] in `dtype`
  DType dtype = DType::f16;
};

// Bytes of device workspace patch_embed_cuda needs (the patch matrix [B*N, C*P*P]).
size_t patch_embed_workspace_bytes(const PatchEmbedCudaParams& p);

void patch_embed_cuda(const PatchEmbedCudaParams& p, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream = nullptr);

}  // namespace pali

#endif  // PALI_WITH_CUDA
