// CUDA patch embedding.
//
// Kernel 1 (one launch, grid-stride over two index ranges):
//   * patches[b*N + n, (c, py, px)] = normalize(pixel(b, c, gy*P + py, gx*P + px)),
//     in the storage dtype, one output element per thread (coalesced writes;
//     the reads of a row of P pixels are contiguous too);
//   * out[b, n, :] = bias + pos_embed[n, :] (the GEMM's C operand).
// Then linear_cuda(accumulate) adds patches · Wᵀ with beta = 1: one GEMM on
// tensor cores, y rounded once. The patch matrix is the only intermediate
// ([B*N, C*P*P], the size of the image in the storage dtype).
#include <algorithm>

#include "ops/cuda_common.cuh"
#include "ops/linear_cuda.h"
#include "ops/patch_embed_cuda.h"

namespace pali {
namespace {

using namespace cuda_detail;

struct Norm {
  float mean[8];
  float inv_std[8];
};

template <typename T, bool kU8>
__global__ void patchify_kernel(const void* __restrict__ pixels, int64_t batch, int channels,
                                int64_t size, int patch, Norm norm, bool normalize, T* __restrict__ patches,
                                const T* __restrict__ bias, const T* __restrict__ pos, int64_t width,
                                T* __restrict__ out) {
  const int64_t grid = size / patch, n_patches = grid * grid;
  const int64_t feat = static_cast<int64_t>(channels) * patch * patch;
  const int64_t total1 = batch * n_patches * feat;
  const int64_t total2 = batch * n_patches * width;
  // Per-channel constants in shared memory: indexing the by-value parameter
  // with a run-time channel would copy it to local memory.
  __shared__ float mean_s[8], inv_std_s[8];
  if (threadIdx.x == 0) {
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      mean_s[c] = norm.mean[c];
      inv_std_s[c] = norm.inv_std[c];
    }
  }
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total1 + total2;
       e += stride) {
    if (e < total1) {
      const int64_t bn = e / feat, f = e % feat;
      const int64_t b = bn / n_patches, n = bn % n_patches;
      const int64_t gy = n / grid, gx = n % grid;
      const int c = static_cast<int>(f / (patch * patch));
      const int64_t py = (f / patch) % patch, px = f % patch;
      const int64_t yy = gy * patch + py, xx = gx * patch + px;
      float v;
      if constexpr (kU8) {
        const uint8_t p = static_cast<const uint8_t*>(pixels)[((b * size + yy) * size + xx) * channels + c];
        v = (static_cast<float>(p) / 255.0f - mean_s[c]) * inv_std_s[c];
      } else {
        v = static_cast<const float*>(pixels)[((b * channels + c) * size + yy) * size + xx];
        if (normalize) v = (v - mean_s[c]) * inv_std_s[c];
      }
      patches[e] = from_float<T>(v);
    } else {
      const int64_t i = e - total1;
      const int64_t w = i % width, n = (i / width) % n_patches;
      float v = 0.0f;
      if (bias) v += to_float(bias[w]);
      if (pos) v += to_float(pos[n * width + w]);
      out[i] = from_float<T>(v);
    }
  }
}

}  // namespace

size_t patch_embed_workspace_bytes(const PatchEmbedCudaParams& p) {
  PALI_CHECK_ARG(p.patch > 0 && p.image_size > 0 && p.image_size % p.patch == 0 && p.channels > 0 &&
                     p.batch >= 0,
                 "patch_embed_cuda: bad sizes (patch must divide image_size)");
  const int64_t g = p.image_size / p.patch;
  return static_cast<size_t>(p.batch * g * g * p.channels * p.patch * p.patch) * dtype_size(p.dtype);
}

void patch_embed_cuda(const PatchEmbedCudaParams& p, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  const size_t need = patch_embed_workspace_bytes(p);
  PALI_CHECK_ARG(p.channels <= 8, "patch_embed_cuda: at most 8 channels, got ", p.channels);
  PALI_CHECK_ARG(p.width > 0, "patch_embed_cuda: width must be > 0");
  if (p.batch == 0) return;
  PALI_CHECK_ARG(p.pixels && p.weight && p.out, "patch_embed_cuda: null pixels, weight or out");
  PALI_CHECK_ARG(workspace && workspace_bytes >= need, "patch_embed_cuda: workspace of ", workspace_bytes,
                 " bytes, needs ", need);
  Norm norm;
  for (int c = 0; c < 8; ++c) {
    norm.mean[c] = p.mean[c];
    norm.inv_std[c] = 1.0f / p.std[c];
  }
  for (int c = 0; c < p.channels; ++c)
    PALI_CHECK_ARG(!(p.format == PixelFormat::u8_hwc || p.normalize) || p.std[c] != 0.0f,
                   "patch_embed_cuda: std[", c, "] is 0");
  const int64_t g = p.image_size / p.patch, rows = p.batch * g * g;
  const int64_t feat = p.channels * p.patch * p.patch;
  const int64_t total = rows * feat + rows * p.width;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((total + threads - 1) / threads, int64_t(sm_count()) * 32)));
  PALI_CUDA_DISPATCH_FLOAT(p.dtype, "patch_embed_cuda", {
    auto* patches = static_cast<scalar_t*>(workspace);
    const auto* bias = static_cast<const scalar_t*>(p.bias);
    const auto* pos = static_cast<const scalar_t*>(p.pos_embed);
    auto* out = static_cast<scalar_t*>(p.out);
    if (p.format == PixelFormat::u8_hwc)
      patchify_kernel<scalar_t, true><<<blocks, threads, 0, stream>>>(
          p.pixels, p.batch, static_cast<int>(p.channels), p.image_size, static_cast<int>(p.patch), norm,
          true, patches, bias, pos, p.width, out);
    else
      patchify_kernel<scalar_t, false><<<blocks, threads, 0, stream>>>(
          p.pixels, p.batch, static_cast<int>(p.channels), p.image_size, static_cast<int>(p.patch), norm,
          p.normalize, patches, bias, pos, p.width, out);
  });
  PALI_CUDA_CHECK_LAUNCH();
  linear_cuda(workspace, feat, rows, p.weight, nullptr, p.width, feat, p.out, p.width,
              /*accumulate=*/true, p.dtype, stream);
}

}  // namespace pali
