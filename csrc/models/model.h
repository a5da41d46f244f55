// What every architecture's model offers its callers (the bindings, a server,
// the C API): one class per architecture implements it, so that no caller
// names an architecture. The registry (models/architectures.h) makes them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/json.h"
#include "generate/decoder.h"
#include "generate/generation_options.h"
#include "ops/linear.h"

namespace pali {

// A batch of prompts as the model's processor gives them.
struct PromptBatch {
  const float* pixels = nullptr;          // float32[batch, C, S, S], normalised
  const int64_t* input_ids = nullptr;     // int64[batch, length]
  const int64_t* attention_mask = nullptr;
  int64_t batch = 0, length = 0;
};

// A batch's decoder, owning what was computed for it before decoding.
class PreparedDecoder : public Decoder {
 public:
  double vision_ms = 0;
};

// A PreparedDecoder from an architecture's state (its encoder output, its
// prompts: State, with a vision_ms field) and its decoder over that state
// (Inner, built from the model and a reference to the state it keeps).
template <typename State, typename Inner>
class OwningDecoder final : public PreparedDecoder {
 public:
  template <typename MakeInner>
  OwningDecoder(State state, MakeInner&& make_inner) : state_(std::move(state)), decoder_(make_inner(state_)) {
    vision_ms = state_.vision_ms;
  }
  int64_t requests() const override { return decoder_.requests(); }
  int64_t vocab_size() const override { return decoder_.vocab_size(); }
  SpecialTokens special_tokens() const override { return decoder_.special_tokens(); }
  std::vector<int64_t> initial_sequence(int64_t request) const override { return decoder_.initial_sequence(request); }
  std::unique_ptr<DecoderSession> start(int64_t rows_per_request, int64_t capacity) const override {
    return decoder_.start(rows_per_request, capacity);
  }

 private:
  State state_;  // before decoder_: it refers to it
  Inner decoder_;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const std::string& architecture() const = 0;
  // The normalised config (every field, defaults filled in).
  virtual Json config_json() const = 0;
  virtual WeightFormat format() const = 0;
  virtual int64_t vocab_size() const = 0;
  // pixel_values must be [batch, channels, image_size, image_size].
  virtual int64_t image_size() const = 0;
  virtual int64_t num_channels() const = 0;
  // How the model's processor pads prompts of different lengths into one
  // batch (the scheduler pads requests that prefill together the same way).
  struct PromptPadding {
    bool left = false;
    int64_t pad_token_id = 0;
  };
  virtual PromptPadding prompt_padding() const = 0;

  // The teacher-forced graph's integer inputs after pixel_values, as its ONNX
  // file names them; each is int64[batch, its length].
  virtual std::vector<std::string> forward_inputs() const = 0;
  // The logits' length for inputs of these lengths; throws InvalidArgument when
  // the lengths do not fit together.
  virtual int64_t logits_length(const std::vector<int64_t>& lengths) const = 0;
  // Teacher-forced logits float32[batch, logits_length, vocab], as the ONNX graph computes them.
  virtual void forward(const float* pixels, int64_t batch, const std::vector<const int64_t*>& inputs,
                       const std::vector<int64_t>& lengths, float* logits) const = 0;

  // What precedes decoding for a batch of prompts, and the decoder over it.
  virtual std::unique_ptr<PreparedDecoder> prepare(const PromptBatch& prompts) const = 0;

  // prepare() and the options' search strategy; timings->vision_ms is the vision
  // tower's, encoder_ms everything else before the search's first step.
  std::vector<std::vector<Hypothesis>> generate(const PromptBatch& prompts, const GenerationOptions& options,
                                                const TokenCallback& on_token, GenerationTimings* timings) const;
};

}  // namespace pali
