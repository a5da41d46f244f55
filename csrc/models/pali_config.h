// Hyper-parameters of the "pali" architecture, spelled as in the ONNX metadata
// `pali.config` and export/config.py. Its field table (pali_config.cc) is the
// one definition of what a file may hold there; Python reads it through the
// bindings (`_core.check_config`, `_core.config_fields`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config_table.h"
#include "core/json.h"

namespace pali {

struct PaliConfig {
  std::string architecture = "pali";
  int64_t image_size = 0;
  int64_t patch_size = 0;
  int64_t num_channels = 3;
  std::vector<float> image_mean;
  std::vector<float> image_std;
  std::string resample = "bilinear";  // the image resampling filter (Python's preprocessing)
  int64_t vision_width = 0;
  int64_t vision_depth = 0;
  int64_t vision_heads = 0;
  int64_t vision_mlp_dim = 0;
  float vision_layer_norm_eps = 1e-6f;
  int64_t d_model = 0;
  int64_t d_kv = 0;
  int64_t num_heads = 0;
  int64_t d_ff = 0;
  int64_t encoder_layers = 0;
  int64_t decoder_layers = 0;
  std::string feed_forward_proj = "gated-gelu";
  float layer_norm_epsilon = 1e-6f;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;
  int64_t unk_token_id = 2;
  int64_t decoder_start_token_id = 0;
  int64_t max_prompt_tokens = 0;
  int64_t max_new_tokens = 0;

  int64_t num_patches() const {
    const int64_t side = patch_size ? image_size / patch_size : 0;
    return side * side;
  }
  int64_t inner_dim() const { return num_heads * d_kv; }
  // Throws ConfigError naming the first inconsistent field (relations between fields).
  void validate() const;
  // The table's parse and validate(): a config as the file holds it.
  static PaliConfig from_json(const Json& config);
  Json to_json() const;
};

const ConfigTable<PaliConfig>& pali_config_table();

}  // namespace pali
