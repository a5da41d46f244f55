#include "models/pali_model.h"

#include <chrono>
#include <cstring>

namespace pali {
namespace {
// The "pali" ViT under its PyTorch names (export/model.py).
VisionTowerSpec pali_vision_spec(const PaliConfig& c) {
  VisionTowerSpec s;
  s.image_size = c.image_size;
  s.patch_size = c.patch_size;
  s.channels = c.num_channels;
  s.width = c.vision_width;
  s.depth = c.vision_depth;
  s.heads = c.vision_heads;
  s.mlp_dim = c.vision_mlp_dim;
  s.out_dim = c.d_model;
  s.layer_norm_eps = c.vision_layer_norm_eps;
  s.patch = "vision.patch_embed";
  s.position = "vision.pos_embed";
  s.position_has_batch_dim = true;
  s.block_prefix = "vision.blocks.";
  s.norm1 = "norm1";
  s.norm2 = "norm2";
  s.q = "attn.q";
  s.k = "attn.k";
  s.v = "attn.v";
  s.out = "attn.out";
  s.fc1 = "mlp.fc1";
  s.fc2 = "mlp.fc2";
  s.final_norm = "vision.norm";
  s.projector = "projector";
  return s;
}

// The T5 encoder's or decoder's block spec from the "pali" config.
T5Spec t5_spec(const PaliConfig& c, int64_t layers) {
  T5Spec s;
  s.d_model = c.d_model;
  s.d_kv = c.d_kv;
  s.num_heads = c.num_heads;
  s.d_ff = c.d_ff;
  s.layers = layers;
  s.activation = c.feed_forward_proj == "gated-silu" ? Activation::silu : Activation::gelu_tanh;
  s.layer_norm_epsilon = c.layer_norm_epsilon;
  s.relative_attention_num_buckets = c.relative_attention_num_buckets;
  s.relative_attention_max_distance = c.relative_attention_max_distance;
  s.vocab_size = c.vocab_size;
  s.tie_word_embeddings = c.tie_word_embeddings;
  return s;
}

double milliseconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}
// One generation's DecoderState behind the search's DecoderSession.
class T5Session final : public DecoderSession {
 public:
  T5Session(const T5Decoder& decoder, DecoderState state, int64_t start_token)
      : decoder_(decoder), state_(std::move(state)), start_token_(start_token) {}
  void first(float* logits) override {
    const std::vector<int64_t> start(state_.rows, start_token_);
    decoder_.step(state_, start.data(), 1, logits, false);
  }
  void step(const int64_t* tokens, float* logits) override { decoder_.step(state_, tokens, 1, logits, false); }
  void reorder(const int64_t* source, int64_t rows) override { decoder_.reorder(state_, source, rows); }
  void append(DecoderSession& other) override {
    auto* joining = dynamic_cast<T5Session*>(&other);
    PALI_CHECK_ARG(joining && &joining->decoder_ == &decoder_, "a session of another model cannot join this one");
    decoder_.append(state_, joining->state_);
  }

 private:
  const T5Decoder& decoder_;
  DecoderState state_;
  int64_t start_token_;
};

}  // namespace

std::unique_ptr<DecoderSession> PaliDecoder::start(int64_t rows_per_request, int64_t capacity) const {
  return std::make_unique<T5Session>(decoder_,
                                     decoder_.start(encoded_.memory.data(), encoded_.mask.data(), encoded_.batch,
                                                    encoded_.length, rows_per_request, capacity),
                                     config_.decoder_start_token_id);
}

PaliModel::PaliModel(std::shared_ptr<const onnx::OnnxFile> file, const PaliConfig& config, WeightFormat format)
    : config_(config), format_(format) {
  config_.validate();
  WeightStore weights(file);
  build(weights);
  weights.check_all_used();
  // Every weight has been copied out of the mappings: only now can a rewrite
  // of the file during loading be told from a good load.
  file->check_unchanged();
}

void PaliModel::build(WeightStore& weights) {
  embedding_ = weights.f32("shared.weight", {config_.vocab_size, config_.d_model});
  vision_ = std::make_unique<VisionTower>(pali_vision_spec(config_), weights, format_);
  encoder_ = std::make_unique<T5Encoder>(t5_spec(config_, config_.encoder_layers), weights, format_);
  decoder_ = std::make_unique<T5Decoder>(t5_spec(config_, config_.decoder_layers), weights, embedding_, format_);
}

std::vector<TensorSpec> PaliModel::expected_tensors(const PaliConfig& config) {
  config.validate();
  WeightStore listing;
  PaliModel model(config);
  model.build(listing);
  return listing.listed();
}

EncoderOutput PaliModel::encode(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
                                int64_t batch, int64_t prompt_len) const {
  const int64_t d = config_.d_model, n = vision_->num_tokens();
  PALI_CHECK_ARG(batch > 0, "batch must be positive");
  PALI_CHECK_ARG(prompt_len >= 0 && prompt_len <= config_.max_prompt_tokens, "prompt has ", prompt_len,
                 " tokens; this model takes at most ", config_.max_prompt_tokens);
  EncoderOutput out;
  out.batch = batch;
  out.length = n + prompt_len;
  out.memory.resize(batch * out.length * d);
  out.mask.resize(batch * out.length);

  auto start = std::chrono::steady_clock::now();
  std::vector<float> visual(batch * n * d);
  vision_->forward(pixels, batch, visual.data());
  out.vision_ms = milliseconds_since(start);

  start = std::chrono::steady_clock::now();
  const float* table = embedding_.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    float* row = out.memory.data() + b * out.length * d;
    std::memcpy(row, visual.data() + b * n * d, n * d * sizeof(float));
    for (int64_t i = 0; i < n; ++i) out.mask[b * out.length + i] = 1;
    for (int64_t t = 0; t < prompt_len; ++t) {
      const int64_t id = input_ids[b * prompt_len + t];
      PALI_CHECK_ARG(id >= 0 && id < config_.vocab_size, "input id ", id, " is outside the vocabulary of ",
                     config_.vocab_size);
      std::memcpy(row + (n + t) * d, table + id * d, d * sizeof(float));
      out.mask[b * out.length + n + t] = attention_mask[b * prompt_len + t] != 0;
    }
  }
  encoder_->forward(out.memory.data(), batch, out.length, out.mask.data());
  out.encoder_ms = milliseconds_since(start);
  return out;
}

void PaliModel::forward(const float* pixels, const int64_t* input_ids, const int64_t* attention_mask,
                        int64_t batch, int64_t prompt_len, const int64_t* decoder_input_ids, int64_t target_len,
                        float* logits) const {
  PALI_CHECK_ARG(target_len > 0, "decoder_input_ids must not be empty");
  EncoderOutput enc = encode(pixels, input_ids, attention_mask, batch, prompt_len);
  DecoderState state = decoder_->start(enc.memory.data(), enc.mask.data(), batch, enc.length, 1, target_len);
  decoder_->step(state, decoder_input_ids, target_len, logits, /*all_positions=*/true);
}

int64_t PaliModel::logits_length(const std::vector<int64_t>& lengths) const {
  PALI_CHECK_ARG(lengths.size() == 3 && lengths[0] == lengths[1],
                 "input_ids and attention_mask must be [batch, prompt_len]");
  return lengths[2];
}

void PaliModel::forward(const float* pixels, int64_t batch, const std::vector<const int64_t*>& inputs,
                        const std::vector<int64_t>& lengths, float* logits) const {
  logits_length(lengths);
  forward(pixels, inputs[0], inputs[1], batch, lengths[0], inputs[2], lengths[2], logits);
}

std::unique_ptr<PreparedDecoder> PaliModel::prepare(const PromptBatch& prompts) const {
  return std::make_unique<OwningDecoder<EncoderOutput, PaliDecoder>>(
      encode(prompts.pixels, prompts.input_ids, prompts.attention_mask, prompts.batch, prompts.length),
      [this](const EncoderOutput& encoded) { return PaliDecoder(*decoder_, config_, encoded); });
}

}  // namespace pali
