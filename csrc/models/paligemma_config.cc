#include "models/paligemma_config.h"

#include <cmath>

#include "core/error.h"

namespace pali {

void PaliGemmaConfig::validate() const {
  auto positive = [](int64_t value, const char* name) {
    PALI_CHECK_ARG(value > 0, "config: ", name, " must be positive, got ", value);
  };
  positive(vision.hidden_size, "vision_config.hidden_size");
  positive(vision.intermediate_size, "vision_config.intermediate_size");
  positive(vision.num_hidden_layers, "vision_config.num_hidden_layers");
  positive(vision.num_attention_heads, "vision_config.num_attention_heads");
  positive(vision.num_channels, "vision_config.num_channels");
  positive(vision.image_size, "vision_config.image_size");
  positive(vision.patch_size, "vision_config.patch_size");
  PALI_CHECK_ARG(vision.image_size % vision.patch_size == 0, "config: vision_config.image_size ", vision.image_size,
                 " is not a multiple of patch_size ", vision.patch_size);
  PALI_CHECK_ARG(vision.hidden_size % vision.num_attention_heads == 0,
                 "config: vision_config.hidden_size is not a multiple of num_attention_heads");
  PALI_CHECK_ARG(vision.hidden_act == "gelu_pytorch_tanh" || vision.hidden_act == "gelu_new",
                 "config: vision_config.hidden_act '", vision.hidden_act, "' is not supported (gelu_pytorch_tanh)");
  PALI_CHECK_ARG(std::isfinite(vision.layer_norm_eps) && vision.layer_norm_eps > 0,
                 "config: vision_config.layer_norm_eps must be finite and positive");
  PALI_CHECK_ARG(text.model_type == "gemma" || text.model_type == "gemma2", "config: text_config.model_type '",
                 text.model_type, "' is not supported (gemma, gemma2)");
  positive(text.hidden_size, "text_config.hidden_size");
  positive(text.intermediate_size, "text_config.intermediate_size");
  positive(text.num_hidden_layers, "text_config.num_hidden_layers");
  positive(text.num_attention_heads, "text_config.num_attention_heads");
  positive(text.num_key_value_heads, "text_config.num_key_value_heads");
  positive(text.head_dim, "text_config.head_dim");
  positive(text.vocab_size, "text_config.vocab_size");
  PALI_CHECK_ARG(text.head_dim % 2 == 0, "config: text_config.head_dim must be even (RoPE)");
  PALI_CHECK_ARG(text.num_attention_heads % text.num_key_value_heads == 0,
                 "config: text_config.num_key_value_heads must divide num_attention_heads");
  PALI_CHECK_ARG(text.hidden_activation == "gelu_pytorch_tanh" || text.hidden_activation == "gelu_new",
                 "config: text_config hidden activation '", text.hidden_activation,
                 "' is not supported (gelu_pytorch_tanh)");
  PALI_CHECK_ARG(std::isfinite(text.rms_norm_eps) && text.rms_norm_eps > 0,
                 "config: text_config.rms_norm_eps must be finite and positive");
  PALI_CHECK_ARG(std::isfinite(text.rope_theta) && text.rope_theta > 1, "config: text_config.rope_theta must be > 1");
  for (float cap : {text.attn_logit_softcapping, text.final_logit_softcapping})
    PALI_CHECK_ARG(std::isfinite(cap) && cap >= 0, "config: soft-capping values must be finite and >= 0");
  PALI_CHECK_ARG(std::isfinite(text.query_pre_attn_scalar) && text.query_pre_attn_scalar >= 0,
                 "config: text_config.query_pre_attn_scalar must be >= 0");
  PALI_CHECK_ARG(text.sliding_window >= 0, "config: text_config.sliding_window must be >= 0");
  PALI_CHECK_ARG(text.layer_types.empty() || static_cast<int64_t>(text.layer_types.size()) == text.num_hidden_layers,
                 "config: text_config.layer_types needs one entry per layer");
  for (const auto& type : text.layer_types)
    PALI_CHECK_ARG(type == "sliding_attention" || type == "full_attention", "config: unknown layer type '", type, "'");
  PALI_CHECK_ARG(projection_dim == text.hidden_size, "config: projection_dim (", projection_dim,
                 ") must equal text_config.hidden_size (", text.hidden_size, ")");
  PALI_CHECK_ARG(num_image_tokens == vision.num_patches(), "config: num_image_tokens (", num_image_tokens,
                 ") must be (image_size / patch_size)^2 = ", vision.num_patches());
  PALI_CHECK_ARG(image_token_index >= 0, "config: image_token_index must be >= 0");
  for (int64_t id : {pad_token_id, eos_token_id})
    PALI_CHECK_ARG(id >= 0 && id < text.vocab_size, "config: special token id ", id, " is outside the vocabulary");
}

}  // namespace pali
