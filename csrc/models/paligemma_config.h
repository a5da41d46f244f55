// Hyper-parameters of the "paligemma" architecture (PaliGemma 1 and 2): a
// SigLIP vision tower, a linear projector, a Gemma or Gemma 2 decoder. Spelled
// as in Hugging Face's config.json (`vision_config`, `text_config`), which the
// converter writes nested into the file's `pali.config` beside the image and
// token settings of the checkpoint's processor. The field tables
// (paligemma_config.cc) are the one definition of what a file may hold.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config_table.h"
#include "core/json.h"

namespace pali {

struct SiglipConfig {
  std::string model_type = "siglip_vision_model";
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
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 8192;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;
  int64_t bos_token_id = 2;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  std::string hidden_act = "gelu_pytorch_tanh";         // Gemma's name
  std::string hidden_activation = "gelu_pytorch_tanh";  // Gemma 2's name
  // Gemma 2 only (0: off).
  float query_pre_attn_scalar = 0;
  float attn_logit_softcapping = 0;
  float final_logit_softcapping = 0;
  int64_t sliding_window = 0;
  std::vector<std::string> layer_types;  // "sliding_attention" | "full_attention" per layer

  bool gemma2() const { return model_type == "gemma2"; }
  const std::string& activation() const { return gemma2() ? hidden_activation : hidden_act; }
  bool sliding(int64_t layer) const {
    return sliding_window > 0 && layer < static_cast<int64_t>(layer_types.size()) &&
           layer_types[layer] == "sliding_attention";
  }
};

struct PaliGemmaConfig {
  std::string architecture = "paligemma";
  std::string model_type = "paligemma";
  int64_t paligemma_version = 1;
  int64_t image_token_index = 0;
  int64_t projection_dim = 0;
  bool tie_word_embeddings = true;
  int64_t num_image_tokens = 0;
  int64_t vocab_size = 0;
  int64_t pad_token_id = 0;
  int64_t bos_token_id = 2;
  int64_t eos_token_id = 1;
  // The processor's image settings (SiglipImageProcessor).
  int64_t image_size = 0;
  std::string resample = "bicubic";
  float rescale_factor = 1.0f / 255;
  std::vector<float> image_mean;
  std::vector<float> image_std;
  bool do_convert_rgb = true;
  // Generation length when the caller gives none (PaliGemma's configs set no default).
  int64_t max_new_tokens = 64;
  SiglipConfig vision;
  GemmaConfig text;

  // Throws ConfigError naming the first inconsistent field (relations between fields).
  void validate() const;
  static PaliGemmaConfig from_json(const Json& config);
  Json to_json() const;
};

const ConfigTable<PaliGemmaConfig>& paligemma_config_table();

}  // namespace pali
