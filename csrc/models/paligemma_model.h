// The "paligemma" architecture (PaliGemma 1 and 2) under transformers'
// PaliGemmaForConditionalGeneration weight names: a SigLIP vision tower (the
// shared VisionTower) and its linear projector give one feature per patch; the
// k-th <image> token of a sequence takes the k-th feature, every other token
// its embedding times sqrt(hidden_size); the Gemma decoder (GemmaDecoder) reads
// the sequence with the prefix-LM mask, positions counted from 1.
#pragma once

#include <memory>

#include "models/gemma_decoder.h"
#include "models/paligemma_config.h"
#include "models/vision_tower.h"
#include "onnx/onnx_file.h"

namespace pali {

class PaliGemmaModel {
 public:
  // Throws ModelFileError naming the file and the tensor when the weights do not match the config.
  PaliGemmaModel(std::shared_ptr<const onnx::OnnxFile> file, const PaliGemmaConfig& config, WeightFormat format);

  const PaliGemmaConfig& config() const { return config_; }
  WeightFormat format() const { return format_; }

  // Teacher-forced logits float32[batch, length, V]. pixels: float32[batch, C, S, S]
  // (normalized); input_ids, attention_mask, token_type_ids: int64[batch, length]
  // as PaliGemmaProcessor gives them (token type 0: prefix, 1: suffix).
  void forward(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
               const int64_t* token_type_ids, int64_t batch, int64_t length, float* logits) const;

 private:
  PaliGemmaConfig config_;
  WeightFormat format_;
  Tensor embedding_;  // embed_tokens, float32 [V, D]
  std::unique_ptr<VisionTower> vision_;
  std::unique_ptr<GemmaDecoder> decoder_;
};

}  // namespace pali
