#include "models/pali_config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "models/config_rules.h"

namespace pali {
namespace {

using namespace config_rules;

[[noreturn]] void relation(const std::string& message) { throw ConfigError(message); }

}  // namespace

const ConfigTable<PaliConfig>& pali_config_table() {
  using C = PaliConfig;
  static const ConfigTable<C> table = [] {
    ConfigTable<C> t;
    t.field("architecture", &C::architecture, one_of({"pali"}, true))
        .field("image_size", &C::image_size, size(kMaxImageSize))
        .field("patch_size", &C::patch_size, size(kMaxImageSize))
        .field("num_channels", &C::num_channels, size(3, true, 3))  // images are preprocessed to RGB
        .field("image_mean", &C::image_mean, required())
        .field("image_std", &C::image_std, positive(true))
        .field("resample", &C::resample, one_of({"bilinear", "bicubic", "nearest", "lanczos"}, false))
        .field("vision_width", &C::vision_width, size(kMaxWidth))
        .field("vision_depth", &C::vision_depth, size(kMaxLayers))
        .field("vision_heads", &C::vision_heads, size(kMaxHeads))
        .field("vision_mlp_dim", &C::vision_mlp_dim, size(kMaxWidth))
        .field("vision_layer_norm_eps", &C::vision_layer_norm_eps, positive(false))
        .field("d_model", &C::d_model, size(kMaxWidth))
        .field("d_kv", &C::d_kv, size(kMaxHeadDim))
        .field("num_heads", &C::num_heads, size(kMaxHeads))
        .field("d_ff", &C::d_ff, size(kMaxWidth))
        .field("encoder_layers", &C::encoder_layers, size(kMaxLayers))
        .field("decoder_layers", &C::decoder_layers, size(kMaxLayers))
        .field("feed_forward_proj", &C::feed_forward_proj, one_of({"gated-gelu", "gated-silu"}, true))
        .field("layer_norm_epsilon", &C::layer_norm_epsilon, positive(false))
        // T5's bucketing needs max_exact = num_buckets // 4 >= 1 in the bidirectional encoder.
        .field("relative_attention_num_buckets", &C::relative_attention_num_buckets, size(kMaxBuckets, true, 4))
        .field("relative_attention_max_distance", &C::relative_attention_max_distance, size(kMaxInt32))
        .field("vocab_size", &C::vocab_size, size(kMaxWidth))
        .field("tie_word_embeddings", &C::tie_word_embeddings, required())
        .field("pad_token_id", &C::pad_token_id, token_id(kMaxWidth, true))
        .field("eos_token_id", &C::eos_token_id, token_id(kMaxWidth, true))
        .field("unk_token_id", &C::unk_token_id, token_id(kMaxWidth, false))
        .field("decoder_start_token_id", &C::decoder_start_token_id, token_id(kMaxWidth, true))
        .field("max_prompt_tokens", &C::max_prompt_tokens, size(kMaxTokens))
        .field("max_new_tokens", &C::max_new_tokens, size(kMaxTokens));
    return t;
  }();
  return table;
}

PaliConfig PaliConfig::from_json(const Json& config) {
  PaliConfig c = pali_config_table().parse(config);
  c.validate();
  return c;
}

Json PaliConfig::to_json() const { return pali_config_table().to_json(*this); }

void PaliConfig::validate() const {
  // Field by field first (a config built in C++ skips the table's parse).
  pali_config_table().parse(to_json());
  if (image_size % patch_size)
    relation(str_cat("field 'image_size' (", image_size, ") must be a multiple of patch_size (", patch_size, ")"));
  const int64_t patches = (image_size / patch_size) * (image_size / patch_size);
  if (patches > kMaxPatches)
    relation(str_cat("fields 'image_size' and 'patch_size' give ", patches, " patches; at most ", kMaxPatches));
  if (vision_width % vision_heads)
    relation(str_cat("field 'vision_width' (", vision_width, ") must be a multiple of vision_heads (", vision_heads,
                     ")"));
  for (const auto& [name, values] : {std::pair{"image_mean", &image_mean}, std::pair{"image_std", &image_std}})
    if (static_cast<int64_t>(values->size()) != num_channels)
      relation(str_cat("field '", name, "' must have one value per channel (", num_channels, "), got ",
                       values->size()));
  for (int64_t channel = 0; channel < num_channels; ++channel) {
    // Pixels in [0, 1] become (x - mean) / std, in float32.
    const double mean = image_mean[channel], std = image_std[channel];
    if (std::max(std::fabs(mean), std::fabs(1 - mean)) / std > std::numeric_limits<float>::max())
      relation(str_cat("fields 'image_mean' and 'image_std' take channel ", channel,
                       "'s pixels beyond float32's range"));
  }
  for (const auto& [name, id] : {std::pair{"pad_token_id", pad_token_id}, std::pair{"eos_token_id", eos_token_id},
                                 std::pair{"unk_token_id", unk_token_id},
                                 std::pair{"decoder_start_token_id", decoder_start_token_id}})
    if (id >= vocab_size)
      relation(str_cat("field '", name, "' (", id, ") must be below vocab_size (", vocab_size, ")"));
  // T5's log-spaced buckets begin at max_exact = num_buckets / 2 in the causal
  // decoder (num_buckets / 4 in the encoder) and divide by log(max_distance / max_exact).
  const int64_t max_exact = relative_attention_num_buckets / 2;
  if (relative_attention_max_distance <= max_exact)
    relation(str_cat("field 'relative_attention_max_distance' (", relative_attention_max_distance,
                     ") must exceed relative_attention_num_buckets // 2 (", max_exact, ")"));
}

}  // namespace pali
