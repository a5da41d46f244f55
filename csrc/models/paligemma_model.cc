#include "models/paligemma_model.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace pali {
namespace {

// SigLIP under transformers' names.
VisionTowerSpec siglip_spec(const PaliGemmaConfig& c) {
  const SiglipConfig& v = c.vision;
  VisionTowerSpec s;
  s.image_size = v.image_size;
  s.patch_size = v.patch_size;
  s.channels = v.num_channels;
  s.width = v.hidden_size;
  s.depth = v.num_hidden_layers;
  s.heads = v.num_attention_heads;
  s.mlp_dim = v.intermediate_size;
  s.out_dim = c.projection_dim;
  s.layer_norm_eps = v.layer_norm_eps;
  s.patch = "model.vision_tower.embeddings.patch_embedding";
  s.position = "model.vision_tower.embeddings.position_embedding.weight";
  s.block_prefix = "model.vision_tower.encoder.layers.";
  s.norm1 = "layer_norm1";
  s.norm2 = "layer_norm2";
  s.q = "self_attn.q_proj";
  s.k = "self_attn.k_proj";
  s.v = "self_attn.v_proj";
  s.out = "self_attn.out_proj";
  s.fc1 = "mlp.fc1";
  s.fc2 = "mlp.fc2";
  s.final_norm = "model.vision_tower.post_layernorm";
  s.projector = "model.multi_modal_projector.linear";
  return s;
}

}  // namespace

PaliGemmaModel::PaliGemmaModel(std::shared_ptr<const onnx::OnnxFile> file, const PaliGemmaConfig& config,
                               WeightFormat format)
    : config_(config), format_(format) {
  config_.validate();
  WeightStore weights(file);
  const GemmaConfig& t = config_.text;
  embedding_ = weights.f32("model.language_model.embed_tokens.weight", {t.vocab_size, t.hidden_size});
  vision_ = std::make_unique<VisionTower>(siglip_spec(config_), weights, format);
  decoder_ = std::make_unique<GemmaDecoder>(config_.text, weights, "model.language_model.", embedding_,
                                            config_.tie_word_embeddings, format);
  weights.check_all_used();
  file->check_unchanged();
}

void PaliGemmaModel::forward(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
                             const int64_t* token_type_ids, int64_t batch, int64_t length, float* logits) const {
  const GemmaConfig& t = config_.text;
  const int64_t d = t.hidden_size, n = config_.num_image_tokens;
  PALI_CHECK_ARG(batch > 0 && length > 0, "empty batch or sequence");
  std::vector<float> features(batch * n * d);
  vision_->forward(pixels, batch, features.data());

  // transformers holds sqrt(hidden_size) as a float32 number.
  const float normalizer = static_cast<float>(std::sqrt(static_cast<double>(d)));
  std::vector<float> x(batch * length * d);
  std::vector<int32_t> key_mask(batch * length);
  std::vector<int64_t> prefix_lengths(batch), positions(length);
  const float* table = embedding_.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    int64_t image_tokens = 0;
    prefix_lengths[b] = length;
    for (int64_t i = 0; i < length; ++i) {
      const int64_t r = b * length + i, id = input_ids[r];
      float* row = x.data() + r * d;
      if (id == config_.image_token_index) {
        PALI_CHECK_ARG(image_tokens < n, "sequence ", b, " has more <image> tokens than the ", n,
                       " image features");
        std::memcpy(row, features.data() + (b * n + image_tokens) * d, d * sizeof(float));
        ++image_tokens;
      } else {
        PALI_CHECK_ARG(id >= 0 && id < t.vocab_size, "input id ", id, " is outside the vocabulary of ",
                       t.vocab_size);
        const float* e = table + id * d;
        for (int64_t c = 0; c < d; ++c) row[c] = e[c] * normalizer;
      }
      key_mask[r] = attention_mask[r] != 0;
      if (token_type_ids[r] != 0 && prefix_lengths[b] == length) prefix_lengths[b] = i;
    }
  }
  for (int64_t i = 0; i < length; ++i) positions[i] = i + 1;  // PaliGemma counts positions from 1
  decoder_->forward(x.data(), batch, length, key_mask.data(), prefix_lengths.data(), positions.data(), logits);
}

}  // namespace pali
