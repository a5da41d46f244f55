#include "models/t5_layers.h"

namespace pali {

T5FeedForward::T5FeedForward(const PaliConfig& config, WeightStore& weights, const std::string& prefix,
                             WeightFormat format)
    : activation(t5_activation(config)), d_ff(config.d_ff) {
  wi = weights.linear_concat({prefix + "wi_0.weight", prefix + "wi_1.weight"}, {config.d_ff, config.d_ff},
                             config.d_model, {}, format);
  wo = weights.linear(prefix + "wo.weight", config.d_model, config.d_ff, "", format);
}

void T5FeedForward::forward_add(const float* h, int64_t rows, float* x, Buffer& wide, Buffer& gated) const {
  float* both = wide.get(rows * 2 * d_ff);
  float* g = gated.get(rows * d_ff);
  linear(h, rows, wi, both);
  gated_activation(both, rows, d_ff, g, activation);
  linear(g, rows, wo, x, /*accumulate=*/true);
}

}  // namespace pali
