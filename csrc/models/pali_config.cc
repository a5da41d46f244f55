#include "models/pali_config.h"

#include <cmath>

#include "core/error.h"

namespace pali {

void PaliConfig::validate() const {
  PALI_CHECK_ARG(architecture == "pali", "config: architecture must be 'pali', got '", architecture, "'");
  auto positive = [](int64_t value, const char* name) {
    PALI_CHECK_ARG(value > 0, "config: ", name, " must be positive, got ", value);
  };
  positive(image_size, "image_size");
  positive(patch_size, "patch_size");
  positive(num_channels, "num_channels");
  positive(vision_width, "vision_width");
  positive(vision_depth, "vision_depth");
  positive(vision_heads, "vision_heads");
  positive(vision_mlp_dim, "vision_mlp_dim");
  positive(d_model, "d_model");
  positive(d_kv, "d_kv");
  positive(num_heads, "num_heads");
  positive(d_ff, "d_ff");
  positive(encoder_layers, "encoder_layers");
  positive(decoder_layers, "decoder_layers");
  positive(relative_attention_num_buckets, "relative_attention_num_buckets");
  positive(relative_attention_max_distance, "relative_attention_max_distance");
  positive(vocab_size, "vocab_size");
  positive(max_prompt_tokens, "max_prompt_tokens");
  positive(max_new_tokens, "max_new_tokens");
  PALI_CHECK_ARG(image_size % patch_size == 0, "config: image_size ", image_size,
                 " is not a multiple of patch_size ", patch_size);
  PALI_CHECK_ARG(vision_width % vision_heads == 0, "config: vision_width ", vision_width,
                 " is not a multiple of vision_heads ", vision_heads);
  PALI_CHECK_ARG(feed_forward_proj == "gated-gelu" || feed_forward_proj == "gated-silu",
                 "config: feed_forward_proj must be 'gated-gelu' or 'gated-silu', got '",
                 feed_forward_proj, "'");
  PALI_CHECK_ARG(static_cast<int64_t>(image_mean.size()) == num_channels &&
                     static_cast<int64_t>(image_std.size()) == num_channels,
                 "config: image_mean and image_std need one value per channel");
  // T5's buckets: half of them exact distances (a quarter per direction in the
  // bidirectional encoder), the rest logarithmic up to max_distance, which must
  // lie past the exact ones or the logarithm's scale is zero or negative.
  PALI_CHECK_ARG(relative_attention_num_buckets >= 4, "config: relative_attention_num_buckets must be at least 4, got ",
                 relative_attention_num_buckets);
  PALI_CHECK_ARG(relative_attention_max_distance > relative_attention_num_buckets / 2,
                 "config: relative_attention_max_distance (", relative_attention_max_distance,
                 ") must exceed relative_attention_num_buckets / 2 (", relative_attention_num_buckets / 2, ")");
  for (float eps : {layer_norm_epsilon, vision_layer_norm_eps})
    PALI_CHECK_ARG(std::isfinite(eps) && eps > 0, "config: layer_norm_epsilon and vision_layer_norm_eps must be "
                   "finite and positive, got ", eps);
  for (float mean : image_mean) PALI_CHECK_ARG(std::isfinite(mean), "config: image_mean must be finite");
  for (float std : image_std)
    PALI_CHECK_ARG(std::isfinite(std) && std > 0, "config: image_std must be finite and positive, got ", std);
  for (int64_t id : {pad_token_id, eos_token_id, unk_token_id, decoder_start_token_id})
    PALI_CHECK_ARG(id >= 0 && id < vocab_size, "config: special token id ", id,
                   " is outside the vocabulary of ", vocab_size);
}

}  // namespace pali
