// The "paligemma" architecture (PaliGemma 1 and 2) under transformers'
// PaliGemmaForConditionalGeneration weight names: a SigLIP vision tower (the
// shared VisionTower) and its linear projector give one feature per patch; the
// k-th <image> token of a sequence takes the k-th feature, every other token
// its embedding times sqrt(hidden_size); the Gemma decoder (GemmaDecoder) reads
// the sequence with the prefix-LM mask, positions counted from 1.
#pragma once

#include <memory>
#include <vector>

#include "generate/decoder.h"
#include "models/gemma_decoder.h"
#include "models/model.h"
#include "models/paligemma_config.h"
#include "models/vision_tower.h"
#include "models/weights.h"
#include "onnx/onnx_file.h"

namespace pali {

// A batch of prompts as the decoder reads them.
struct PaliGemmaPrompts {
  int64_t batch = 0, length = 0;
  std::vector<float> embeddings;   // [batch, length, D]: image features and scaled token embeddings
  std::vector<int32_t> key_mask;   // [batch, length]
  std::vector<int64_t> input_ids;  // [batch, length]
  double vision_ms = 0;
};

class PaliGemmaModel;

// The Gemma decoder over one batch of prompts, for the search strategies: each
// prompt's keys and values are computed once and read by all its rows.
class PaliGemmaDecoder final : public Decoder {
 public:
  PaliGemmaDecoder(const PaliGemmaModel& model, const PaliGemmaPrompts& prompts) : model_(model), prompts_(prompts) {}
  int64_t requests() const override { return prompts_.batch; }
  int64_t vocab_size() const override;
  SpecialTokens special_tokens() const override;
  std::vector<int64_t> initial_sequence(int64_t request) const override;
  std::unique_ptr<DecoderSession> start(int64_t rows_per_request, int64_t capacity) const override;

 private:
  const PaliGemmaModel& model_;
  const PaliGemmaPrompts& prompts_;
};

class PaliGemmaModel final : public Model {
 public:
  // Throws ModelFileError naming the file and the tensor when the weights do not match the config.
  PaliGemmaModel(std::shared_ptr<const onnx::OnnxFile> file, const PaliGemmaConfig& config, WeightFormat format);

  // The tensors a file of this config must hold (names and shapes), in the order the model reads them.
  static std::vector<TensorSpec> expected_tensors(const PaliGemmaConfig& config);

  const PaliGemmaConfig& config() const { return config_; }

  // Model
  const std::string& architecture() const override { return config_.architecture; }
  Json config_json() const override { return config_.to_json(); }
  WeightFormat format() const override { return format_; }
  int64_t vocab_size() const override { return config_.text.vocab_size; }
  int64_t image_size() const override { return config_.vision.image_size; }
  int64_t num_channels() const override { return config_.vision.num_channels; }
  // Left-padded, as transformers' processor pads them.
  PromptPadding prompt_padding() const override { return {true, config_.pad_token_id}; }
  // As PaliGemmaProcessor gives them; token_type_ids: 0 for the prefix, 1 for the suffix.
  std::vector<std::string> forward_inputs() const override {
    return {"input_ids", "attention_mask", "token_type_ids"};
  }
  int64_t logits_length(const std::vector<int64_t>& lengths) const override;
  void forward(const float* pixels, int64_t batch, const std::vector<const int64_t*>& inputs,
               const std::vector<int64_t>& lengths, float* logits) const override;
  std::unique_ptr<PreparedDecoder> prepare(const PromptBatch& prompts) const override;

  // Teacher-forced logits float32[batch, length, V]. pixels: float32[batch, C, S, S]
  // (normalized); input_ids, attention_mask, token_type_ids: int64[batch, length]
  // as PaliGemmaProcessor gives them (token type 0: prefix, 1: suffix).
  void forward(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
               const int64_t* token_type_ids, int64_t batch, int64_t length, float* logits) const;

  // The prompts (<image> tokens, bos, prompt, "\n"; left-padded) for generate().
  PaliGemmaPrompts prepare(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
                           int64_t batch, int64_t length) const;
  // The decoder over `prompts` (which must outlive it).
  PaliGemmaDecoder decoder_for(const PaliGemmaPrompts& prompts) const { return PaliGemmaDecoder(*this, prompts); }
  // Scaled embeddings of generated tokens, [n, D].
  void embed(const int64_t* tokens, int64_t n, float* out) const;
  const GemmaDecoder& decoder() const { return *decoder_; }

 private:
  explicit PaliGemmaModel(const PaliGemmaConfig& config) : config_(config), format_(WeightFormat::f32) {}
  void build(WeightStore& weights);

  PaliGemmaConfig config_;
  WeightFormat format_;
  // Whether embed() reads the table from the output layer it is tied to (float formats).
  bool embeds_from_head() const;
  // embed_tokens [V, D] unless embeds_from_head(): bfloat16 as a bfloat16 file stores it, else float32.
  Tensor embedding_;
  std::unique_ptr<VisionTower> vision_;
  std::unique_ptr<GemmaDecoder> decoder_;
};

}  // namespace pali
