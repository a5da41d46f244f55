// Options of generate(), named as in transformers' generate().
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace pali {

enum class EarlyStopping : uint8_t { heuristic, on, never };  // False, True, "never"

struct GenerationOptions {
  int64_t max_new_tokens = 32;
  int64_t min_new_tokens = 0;
  int64_t num_beams = 1;
  float length_penalty = 1.0f;
  EarlyStopping early_stopping = EarlyStopping::heuristic;
  int64_t num_return_sequences = 1;
  int64_t no_repeat_ngram_size = 0;
  float repetition_penalty = 1.0f;
  bool do_sample = false;
  float temperature = 1.0f;
  int64_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;

  // Throws InvalidArgument naming the first bad value.
  void validate() const;
};

// One generated sequence: tokens after the decoder start token, without EOS or padding.
struct Hypothesis {
  std::vector<int64_t> tokens;
  float score = 0;      // beam search: length-normalized sum of log-probs; else the sum of log-probs
  bool finished = false;  // ended with EOS (false: stopped at max_new_tokens)
};

struct GenerationTimings {
  double vision_ms = 0, encoder_ms = 0, first_token_ms = 0, decode_ms = 0;
  int64_t steps = 0;
};

// Called with (request index, token) as each token of a request is chosen, for
// greedy search and sampling; returning false stops generation early.
using TokenCallback = std::function<bool(int64_t, int64_t)>;

}  // namespace pali
