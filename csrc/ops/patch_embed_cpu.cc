// CPU fused patch embedding: (normalize +) patchify into a scratch matrix, then
// one linear() that adds the projection and bias onto the position embedding.
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/patch_embed.h"

namespace pali {
namespace {

void check_sizes(int64_t batch, int64_t channels, int64_t image_size, int64_t patch,
                 const LinearWeight& proj) {
  PALI_CHECK_ARG(batch >= 0 && channels > 0 && patch > 0 && image_size > 0,
                 "patch_embed: bad sizes");
  PALI_CHECK_ARG(image_size % patch == 0, "patch_embed: image size ", image_size,
                 " is not a multiple of the patch size ", patch);
  PALI_CHECK_ARG(proj.k == channels * patch * patch, "patch_embed: projection has K = ", proj.k,
                 ", expected C*P*P = ", channels * patch * patch);
}

// Fills out [B, N, W] with the position embedding (or zeros) and accumulates the projection.
void project(const std::vector<float>& patches, int64_t batch, int64_t n, const LinearWeight& proj,
             const float* pos_embed, float* out) {
  const int64_t w = proj.n;
  if (pos_embed) {
    parallel_for(0, batch, 1, [&](int64_t bb, int64_t be) {
      for (int64_t b = bb; b < be; ++b) std::memcpy(out + b * n * w, pos_embed, n * w * sizeof(float));
    });
    linear(patches.data(), batch * n, proj, out, /*accumulate=*/true);
  } else {
    linear(patches.data(), batch * n, proj, out, /*accumulate=*/false);
  }
}

}  // namespace

void patch_embed(const float* pixels, int64_t batch, int64_t channels, int64_t image_size,
                 int64_t patch, const LinearWeight& proj, const float* pos_embed, float* out) {
  check_sizes(batch, channels, image_size, patch, proj);
  if (batch == 0) return;
  PALI_CHECK_ARG(pixels && out, "patch_embed: null pointer");
  const int64_t g = image_size / patch, n = g * g, kdim = proj.k;
  std::vector<float> patches(static_cast<size_t>(batch * n * kdim));
  parallel_for(0, batch * n, 16, [&](int64_t pb, int64_t pe) {
    for (int64_t idx = pb; idx < pe; ++idx) {
      const int64_t b = idx / n, py = (idx % n) / g, px = idx % g;
      float* dst = patches.data() + idx * kdim;
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t i = 0; i < patch; ++i) {
          const float* src = pixels + ((b * channels + c) * image_size + py * patch + i) * image_size + px * patch;
          std::memcpy(dst + (c * patch + i) * patch, src, patch * sizeof(float));
        }
    }
  });
  project(patches, batch, n, proj, pos_embed, out);
}

void patch_embed_u8(const uint8_t* pixels, int64_t batch, int64_t channels, int64_t image_size,
                    int64_t patch, const float* mean, const float* std, const LinearWeight& proj,
                    const float* pos_embed, float* out) {
  check_sizes(batch, channels, image_size, patch, proj);
  if (batch == 0) return;
  PALI_CHECK_ARG(pixels && out && mean && std, "patch_embed_u8: null pointer");
  const int64_t g = image_size / patch, n = g * g, kdim = proj.k;
  // x = (p / 255 - mean) / std = p * a + c per channel; a table per channel and value.
  std::vector<float> lut(static_cast<size_t>(channels * 256));
  for (int64_t c = 0; c < channels; ++c) {
    PALI_CHECK_ARG(std[c] != 0.0f, "patch_embed_u8: std[", c, "] is zero");
    for (int v = 0; v < 256; ++v) lut[c * 256 + v] = (static_cast<float>(v) / 255.0f - mean[c]) / std[c];
  }
  std::vector<float> patches(static_cast<size_t>(batch * n * kdim));
  parallel_for(0, batch * n, 16, [&](int64_t pb, int64_t pe) {
    for (int64_t idx = pb; idx < pe; ++idx) {
      const int64_t b = idx / n, py = (idx % n) / g, px = idx % g;
      float* dst = patches.data() + idx * kdim;
      for (int64_t i = 0; i < patch; ++i) {
        const uint8_t* row = pixels + ((b * image_size + py * patch + i) * image_size + px * patch) * channels;
        for (int64_t jx = 0; jx < patch; ++jx)
          for (int64_t c = 0; c < channels; ++c)
            dst[(c * patch + i) * patch + jx] = lut[c * 256 + row[jx * channels + c]];
      }
    }
  });
  project(patches, batch, n, proj, pos_embed, out);
}

}  // namespace pali
