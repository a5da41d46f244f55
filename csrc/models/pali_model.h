// The PaLI model: ViT -> projector -> visual tokens prepended to the prompt's
// embeddings -> T5 encoder -> T5 decoder with a KV cache -> lm_head.
//
// Weights are looked up by name in the ONNX file (PyTorch state_dict names and
// layout) and prepared once into the chosen storage format; the model itself is
// immutable after loading, so several threads may run it at once.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/pali_config.h"
#include "models/t5_decoder.h"
#include "models/t5_encoder.h"
#include "models/vit.h"
#include "onnx/onnx_file.h"

namespace pali {

// The encoder's output for a batch of requests.
struct EncoderOutput {
  int64_t batch = 0;
  int64_t length = 0;           // num_patches + prompt length
  std::vector<float> memory;    // [batch, length, d_model]
  std::vector<int32_t> mask;    // [batch, length]
  double vision_ms = 0, encoder_ms = 0;
};

class PaliModel {
 public:
  // Throws ModelFileError naming the file and the tensor when the weights do
  // not match the config. The model keeps its own copies of the weights (packed
  // or float32), not the file: once the caller drops it, it is unmapped.
  PaliModel(std::shared_ptr<const onnx::OnnxFile> file, const PaliConfig& config, WeightFormat format);

  const PaliConfig& config() const { return config_; }
  const T5Decoder& decoder() const { return *decoder_; }
  WeightFormat format() const { return format_; }

  // pixels: float32[batch, C, S, S] (normalized); input_ids, attention_mask: int64[batch, prompt_len].
  EncoderOutput encode(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
                       int64_t batch, int64_t prompt_len) const;
  // Teacher-forced logits float32[batch, target_len, V] for decoder_input_ids int64[batch, target_len].
  void forward(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask, int64_t batch,
               int64_t prompt_len, const int64_t* decoder_input_ids, int64_t target_len, float* logits) const;

 private:
  PaliConfig config_;
  WeightFormat format_;
  Tensor embedding_;  // shared.weight, float32 [V, d_model]
  std::unique_ptr<VisionEncoder> vision_;
  std::unique_ptr<T5Encoder> encoder_;
  std::unique_ptr<T5Decoder> decoder_;
};

}  // namespace pali
