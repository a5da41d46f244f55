// Fused ViT patch embedding: (normalize +) patchify + project + bias + position
// embedding, the conv PxP stride P of the model written as a linear layer.
//
// Patches are row-major over the (S/P) x (S/P) grid; a patch's features are in
// (C, P, P) order, the order of the conv weight [W, C, P, P] reshaped to
// [W, C*P*P], which is what `proj` must be prepared from (any WeightFormat).
#pragma once

#include <cstdint>

#include "ops/linear.h"

namespace pali {

// pixels: float32 [B, C, S, S], already normalized by the caller.
// pos_embed: [N, W] with N = (S/P)^2, or null. out: [B, N, W].
// Requires S % P == 0 and proj.k == C*P*P.
void patch_embed(const float* pixels, int64_t batch, int64_t channels, int64_t image_size,
                 int64_t patch, const LinearWeight& proj, const float* pos_embed, float* out);

// pixels: uint8 [B, S, S, C] (HWC, as images load), normalized on the fly:
// x = (p / 255 - mean[c]) / std[c] (mean/std per channel; PaLI's [-1, 1] is
// mean = std = 0.5). Otherwise as patch_embed().
void patch_embed_u8(const uint8_t* pixels, int64_t batch, int64_t channels, int64_t image_size,
                    int64_t patch, const float* mean, const float* std, const LinearWeight& proj,
                    const float* pos_embed, float* out);

}  // namespace pali
