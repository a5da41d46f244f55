// Logits processors as a chain, as transformers' LogitsProcessorList and
// llama.cpp's sampler chain: each processor rewrites one row's scores in
// place, and logits_processors() lists those the options ask for in
// transformers' order (repetition penalty, no-repeat n-grams, minimum new
// tokens; then, when sampling, temperature, top-k, top-p). The search
// strategies see only the list, so a new processor is one class and one line
// of the builder.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "generate/generation_options.h"

namespace pali {

class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  // scores[vocab] of one row of `request` (its index in the batch) whose
  // sequence so far (the decoder's initial sequence, then the tokens
  // generated) is `sequence`, after `generated` tokens. A processor lives for
  // one generate() call, so it may keep state from call to call, per request
  // where it needs it (a row's place in the session changes as rows finish).
  virtual void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
                       int64_t vocab) = 0;
};

class LogitsProcessorList {
 public:
  void add(std::unique_ptr<LogitsProcessor> processor) { processors_.push_back(std::move(processor)); }
  bool empty() const { return processors_.empty(); }
  size_t size() const { return processors_.size(); }
  // Every processor in turn, in the order they were added.
  void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
               int64_t vocab) {
    for (const auto& processor : processors_) processor->process(request, sequence, generated, scores, vocab);
  }

 private:
  std::vector<std::unique_ptr<LogitsProcessor>> processors_;
};

// Scores of tokens already in the sequence: negative ones times the penalty,
// positive ones divided by it (transformers' RepetitionPenaltyLogitsProcessor).
class RepetitionPenalty final : public LogitsProcessor {
 public:
  explicit RepetitionPenalty(float penalty) : penalty_(penalty) {}
  void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
               int64_t vocab) override;

 private:
  float penalty_;
  std::vector<uint8_t> seen_;  // [vocab], all zero between calls
};

// Bans every token that would repeat an n-gram of the sequence.
class NoRepeatNGram final : public LogitsProcessor {
 public:
  explicit NoRepeatNGram(int64_t n) : n_(n) {}
  void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
               int64_t vocab) override;

 private:
  int64_t n_;
};

// Bans eos until `min_new_tokens` tokens were generated.
class MinNewTokens final : public LogitsProcessor {
 public:
  MinNewTokens(int64_t min_new_tokens, int64_t eos_token_id) : min_new_tokens_(min_new_tokens), eos_(eos_token_id) {}
  void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
               int64_t vocab) override;

 private:
  int64_t min_new_tokens_, eos_;
};

class Temperature final : public LogitsProcessor {
 public:
  explicit Temperature(float temperature) : temperature_(temperature) {}
  void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
               int64_t vocab) override;

 private:
  float temperature_;
};

// Keeps the k highest scores (and those tied with the k-th); the rest become -inf.
class TopK final : public LogitsProcessor {
 public:
  explicit TopK(int64_t k) : k_(k) {}
  void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
               int64_t vocab) override;

 private:
  int64_t k_;
  std::vector<float> sorted_;
};

// Keeps the smallest set of most likely tokens whose probability reaches top_p.
class TopP final : public LogitsProcessor {
 public:
  explicit TopP(float top_p) : top_p_(top_p) {}
  void process(int64_t request, const std::vector<int64_t>& sequence, int64_t generated, float* scores,
               int64_t vocab) override;

 private:
  float top_p_;
  std::vector<int64_t> order_;
};

// The processors `options` asks for, in transformers' order, the sampling
// warpers (temperature, top-k, top-p) only with do_sample; options that change
// nothing add no processor.
LogitsProcessorList logits_processors(const GenerationOptions& options, int64_t eos_token_id);

}  // namespace pali
