#include "models/t5_layers.h"

namespace pali {

T5FeedForward::T5FeedForward(const T5Spec& config, WeightStore& weights, const std::string& prefix,
                             WeightFormat format)
    : activation(config.activation), d_ff(config.d_ff) {
  wi = weights.linear_concat({prefix + "wi_0.weight", prefix + "wi_1.weight"}, {config.d_ff, config.d_ff},
                             config.d_model, {}, format);
  wo = weights.linear(prefix + "wo.weight", config.d_model, config.d_ff, "", format);
}

void T5FeedForward::forward_add(const float* h, int64_t rows, float* x, Buffer& wide, Buffer& gated) const {
  forward_add(h, rows, x, wide.get(rows * 2 * d_ff), gated.get(rows * d_ff));
}

void T5FeedForward::forward_add(const float* h, int64_t rows, float* x, float* wide, float* gated) const {
  linear(h, rows, wi, wide);
  gated_activation(wide, rows, d_ff, gated, activation);
  linear(gated, rows, wo, x, /*accumulate=*/true);
}

}  // namespace pali
