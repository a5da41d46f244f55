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

#include "generate/decoder.h"
#include "models/model.h"
#include "models/pali_config.h"
#include "models/t5_decoder.h"
#include "models/t5_encoder.h"
#include "models/vision_tower.h"
#include "models/weights.h"
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

// The T5 decoder over one batch's encoder output, for the search strategies:
// every row of a request (beam or sample) attends to that request's one copy
// of the encoder output's cross-attention keys and values, also after the
// session has dropped finished rows.
class PaliDecoder final : public Decoder {
 public:
  PaliDecoder(const T5Decoder& decoder, const PaliConfig& config, const EncoderOutput& encoded)
      : decoder_(decoder), config_(config), encoded_(encoded) {}
  int64_t requests() const override { return encoded_.batch; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  SpecialTokens special_tokens() const override { return {config_.eos_token_id, config_.pad_token_id}; }
  std::vector<int64_t> initial_sequence(int64_t) const override { return {config_.decoder_start_token_id}; }
  std::unique_ptr<DecoderSession> start(int64_t rows_per_request, int64_t capacity) const override;

 private:
  const T5Decoder& decoder_;
  const PaliConfig& config_;
  const EncoderOutput& encoded_;
};

class PaliModel final : public Model {
 public:
  // Throws ModelFileError naming the file and the tensor when the weights do
  // not match the config. The model keeps its own copies of the weights (packed
  // or float32), not the file: once the caller drops it, it is unmapped.
  PaliModel(std::shared_ptr<const onnx::OnnxFile> file, const PaliConfig& config, WeightFormat format);

  // The tensors a file of this config must hold (names and shapes), in the order the model reads them.
  static std::vector<TensorSpec> expected_tensors(const PaliConfig& config);

  const PaliConfig& config() const { return config_; }
  const T5Decoder& decoder() const { return *decoder_; }

  // Model
  const std::string& architecture() const override { return config_.architecture; }
  Json config_json() const override { return config_.to_json(); }
  WeightFormat format() const override { return format_; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t image_size() const override { return config_.image_size; }
  int64_t num_channels() const override { return config_.num_channels; }
  // Right-padded, as the encoder's key mask reads them.
  PromptPadding prompt_padding() const override { return {false, config_.pad_token_id}; }
  // input_ids, attention_mask: the prompt; decoder_input_ids: the target.
  std::vector<std::string> forward_inputs() const override {
    return {"input_ids", "attention_mask", "decoder_input_ids"};
  }
  int64_t logits_length(const std::vector<int64_t>& lengths) const override;
  void forward(const float* pixels, int64_t batch, const std::vector<const int64_t*>& inputs,
               const std::vector<int64_t>& lengths, float* logits) const override;
  std::unique_ptr<PreparedDecoder> prepare(const PromptBatch& prompts) const override;

  // pixels: float32[batch, C, S, S] (normalized); input_ids, attention_mask: int64[batch, prompt_len].
  EncoderOutput encode(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
                       int64_t batch, int64_t prompt_len) const;
  // The decoder over `encoded` (which must outlive it), for generate().
  PaliDecoder decoder_for(const EncoderOutput& encoded) const { return PaliDecoder(*decoder_, config_, encoded); }
  // Teacher-forced logits float32[batch, target_len, V] for decoder_input_ids int64[batch, target_len].
  void forward(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask, int64_t batch,
               int64_t prompt_len, const int64_t* decoder_input_ids, int64_t target_len, float* logits) const;

 private:
  explicit PaliModel(const PaliConfig& config) : config_(config), format_(WeightFormat::f32) {}
  void build(WeightStore& weights);

  PaliConfig config_;
  WeightFormat format_;
  Tensor embedding_;  // shared.weight, float32 [V, d_model]
  std::unique_ptr<VisionTower> vision_;
  std::unique_ptr<T5Encoder> encoder_;
  std::unique_ptr<T5Decoder> decoder_;
};

}  // namespace pali
