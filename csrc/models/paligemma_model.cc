#include "models/paligemma_model.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
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
  build(weights);
  weights.check_all_used();
  file->check_unchanged();
}

bool PaliGemmaModel::embeds_from_head() const {
  return config_.tie_word_embeddings &&
         (format_ == WeightFormat::f32 || format_ == WeightFormat::f16 || format_ == WeightFormat::bf16);
}

void PaliGemmaModel::build(WeightStore& weights) {
  const GemmaConfig& t = config_.text;
  const std::string embedding_name = "model.language_model.embed_tokens.weight";
  const Tensor stored = weights.raw(embedding_name, {t.vocab_size, t.hidden_size});
  // Tied to an output layer of float weights, the table is read back from it
  // (embed()): no second copy of the largest tensor (1.2 GB in bfloat16 at
  // 3B). Otherwise (untied, or quantized: the tokens' embeddings would move by
  // a step of int8 or int4 too) the table is a copy in the checkpoint's
  // precision: bfloat16 as the released checkpoints store it, else float32.
  if (!embeds_from_head())
    embedding_ = stored.dtype() == DType::bf16 ? weights.copy(stored)
                                               : weights.f32(embedding_name, {t.vocab_size, t.hidden_size});
  vision_ = std::make_unique<VisionTower>(siglip_spec(config_), weights, format_);
  decoder_ = std::make_unique<GemmaDecoder>(config_.text, weights, "model.language_model.", stored,
                                            config_.tie_word_embeddings, format_);
  weights.release(embedding_name);
}

std::vector<TensorSpec> PaliGemmaModel::expected_tensors(const PaliGemmaConfig& config) {
  config.validate();
  WeightStore listing;
  PaliGemmaModel model(config);
  model.build(listing);
  return listing.listed();
}

PaliGemmaPrompts PaliGemmaModel::prepare(const float* pixels, const int64_t* input_ids,
                                         const int64_t* attention_mask, int64_t batch, int64_t length) const {
  const GemmaConfig& t = config_.text;
  const int64_t d = t.hidden_size, n = config_.num_image_tokens;
  PALI_CHECK_ARG(batch > 0 && length > 0, "empty batch or sequence");
  PaliGemmaPrompts out;
  out.batch = batch;
  out.length = length;
  const auto start = std::chrono::steady_clock::now();
  std::vector<float> features(batch * n * d);
  vision_->forward(pixels, batch, features.data());
  out.vision_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  out.embeddings.resize(batch * length * d);
  out.key_mask.resize(batch * length);
  out.input_ids.assign(input_ids, input_ids + batch * length);
  for (int64_t b = 0; b < batch; ++b) {
    int64_t image_tokens = 0;
    for (int64_t i = 0; i < length; ++i) {
      const int64_t r = b * length + i, id = input_ids[r];
      float* row = out.embeddings.data() + r * d;
      if (id == config_.image_token_index) {
        PALI_CHECK_ARG(image_tokens < n, "sequence ", b, " has more <image> tokens than the ", n,
                       " image features");
        std::memcpy(row, features.data() + (b * n + image_tokens) * d, d * sizeof(float));
        ++image_tokens;
      } else {
        embed(&id, 1, row);
      }
      out.key_mask[r] = attention_mask[r] != 0;
    }
  }
  return out;
}

void PaliGemmaModel::embed(const int64_t* tokens, int64_t n, float* out) const {
  const int64_t d = config_.text.hidden_size, vocab = config_.text.vocab_size;
  // transformers holds sqrt(hidden_size) as a float32 number.
  const float normalizer = static_cast<float>(std::sqrt(static_cast<double>(d)));
  for (int64_t i = 0; i < n; ++i) {
    PALI_CHECK_ARG(tokens[i] >= 0 && tokens[i] < vocab, "input id ", tokens[i], " is outside the vocabulary of ",
                   vocab);
    float* row = out + i * d;
    if (embeds_from_head()) {
      linear_weight_row(decoder_->lm_head(), tokens[i], row);
    } else if (embedding_.dtype() == DType::bf16) {
      const BFloat16* e = embedding_.data<BFloat16>() + tokens[i] * d;
      for (int64_t c = 0; c < d; ++c) row[c] = bfloat16_to_float(e[c].bits);
    } else {
      std::memcpy(row, embedding_.data<float>() + tokens[i] * d, d * sizeof(float));
    }
    for (int64_t c = 0; c < d; ++c) row[c] *= normalizer;
  }
}

void PaliGemmaModel::forward(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
                             const int64_t* token_type_ids, int64_t batch, int64_t length, float* logits) const {
  PaliGemmaPrompts prompts = prepare(pixels, input_ids, attention_mask, batch, length);
  std::vector<int64_t> prefix_lengths(batch, length), positions(batch * length);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < length; ++i)
      if (token_type_ids[b * length + i] != 0) {
        prefix_lengths[b] = i;
        break;
      }
  // A forward without position ids, as transformers runs it: 1, 2, ... counting padding.
  for (int64_t r = 0; r < batch * length; ++r) positions[r] = r % length + 1;
  decoder_->forward(prompts.embeddings.data(), batch, length, prompts.key_mask.data(), prefix_lengths.data(),
                    positions.data(), logits);
}

namespace {

// One generation's GemmaState behind the search's DecoderSession.
class GemmaSession final : public DecoderSession {
 public:
  GemmaSession(const PaliGemmaModel& model, GemmaState state) : model_(model), state_(std::move(state)) {}
  void first(float* logits) override {
    const int64_t vocab = model_.decoder().vocab_size();
    for (int64_t r = 0; r < state_.rows; ++r)
      std::memcpy(logits + r * vocab, state_.first_logits.data() + state_.row_request[r] * vocab,
                  vocab * sizeof(float));
  }
  void step(const int64_t* tokens, float* logits) override {
    embeddings_.resize(state_.rows * model_.config().text.hidden_size);
    model_.embed(tokens, state_.rows, embeddings_.data());
    model_.decoder().step(state_, embeddings_.data(), logits);
  }
  void reorder(const int64_t* source, int64_t rows) override { model_.decoder().reorder(state_, source, rows); }
  void append(DecoderSession& other) override {
    auto* joining = dynamic_cast<GemmaSession*>(&other);
    PALI_CHECK_ARG(joining && &joining->model_ == &model_, "a session of another model cannot join this one");
    model_.decoder().append(state_, joining->state_);
  }

 private:
  const PaliGemmaModel& model_;
  GemmaState state_;
  std::vector<float> embeddings_;
};

}  // namespace

int64_t PaliGemmaDecoder::vocab_size() const { return model_.config().text.vocab_size; }

SpecialTokens PaliGemmaDecoder::special_tokens() const {
  return {model_.config().eos_token_id, model_.config().pad_token_id};
}

std::vector<int64_t> PaliGemmaDecoder::initial_sequence(int64_t request) const {
  const int64_t* row = prompts_.input_ids.data() + request * prompts_.length;
  return std::vector<int64_t>(row, row + prompts_.length);
}

std::unique_ptr<DecoderSession> PaliGemmaDecoder::start(int64_t rows_per_request, int64_t capacity) const {
  std::vector<float> x = prompts_.embeddings;  // the prompt pass overwrites its input
  return std::make_unique<GemmaSession>(
      model_, model_.decoder().start(x.data(), prompts_.batch, prompts_.length, prompts_.key_mask.data(),
                                     rows_per_request, capacity));
}

int64_t PaliGemmaModel::logits_length(const std::vector<int64_t>& lengths) const {
  PALI_CHECK_ARG(lengths.size() == 3 && lengths[0] == lengths[1] && lengths[1] == lengths[2],
                 "input_ids, attention_mask and token_type_ids must have one shape [batch, length]");
  return lengths[0];
}

void PaliGemmaModel::forward(const float* pixels, int64_t batch, const std::vector<const int64_t*>& inputs,
                             const std::vector<int64_t>& lengths, float* logits) const {
  logits_length(lengths);
  forward(pixels, inputs[0], inputs[1], inputs[2], batch, lengths[0], logits);
}

std::unique_ptr<PreparedDecoder> PaliGemmaModel::prepare(const PromptBatch& prompts) const {
  return std::make_unique<OwningDecoder<PaliGemmaPrompts, PaliGemmaDecoder>>(
      prepare(prompts.pixels, prompts.input_ids, prompts.attention_mask, prompts.batch, prompts.length),
      [this](const PaliGemmaPrompts& state) { return PaliGemmaDecoder(*this, state); });
}

}  // namespace pali
