// Hyper-parameters of the "paligemma" architecture (PaliGemma 1 and 2): a
// SigLIP vision tower, a linear projector, a Gemma or Gemma 2 decoder. Spelled
// as in Hugging Face's config.json (`vision_config`, `text_config`), which the
// converter writes nested, unchanged, into the file's `pali.config`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pali {

struct SiglipConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_channels = 3;
  int64_t image_size = 0;
  int64_t patch_size = 0;
  float layer_norm_eps = 1e-6f;
  std::string hidden_act = "gelu_pytorch_tanh";

  int64_t num_patches() const { return patch_size ? (image_size / patch_size) * (image_size / patch_size) : 0; }
};

struct GemmaConfig {
  std::string model_type = "gemma";  // "gemma" (PaliGemma 1) or "gemma2" (PaliGemma 2)
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  int64_t vocab_size = 0;
  std::string hidden_activation = "gelu_pytorch_tanh";
  // Gemma 2 only (0: off).
  float query_pre_attn_scalar = 0;
  float attn_logit_softcapping = 0;
  float final_logit_softcapping = 0;
  int64_t sliding_window = 0;
  std::vector<std::string> layer_types;  // "sliding_attention" | "full_attention" per layer

  bool gemma2() const { return model_type == "gemma2"; }
  bool sliding(int64_t layer) const {
    return sliding_window > 0 && layer < static_cast<int64_t>(layer_types.size()) &&
           layer_types[layer] == "sliding_attention";
  }
};

struct PaliGemmaConfig {
  SiglipConfig vision;
  GemmaConfig text;
  int64_t image_token_index = 0;
  int64_t projection_dim = 0;
  int64_t num_image_tokens = 0;
  bool tie_word_embeddings = true;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;

  // Throws InvalidArgument naming the first inconsistent field.
  void validate() const;
};

}  // namespace pali
