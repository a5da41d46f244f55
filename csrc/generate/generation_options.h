// Options of generate(), named and meant as in transformers' generate() (5.x).
//
// generation_option_specs() is the one definition of the options: name, kind,
// default, range and meaning. parse_generation_options() checks options
// against it with the messages users see (Python's parse_options and the
// native binding both call it), then validate() checks the relations between
// options.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
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
  int64_t top_k = 50;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool has_seed = false;  // false: the caller draws one (a seed of None)

  // Throws InvalidArgument naming the first bad value or pair of values.
  void validate() const;
};

enum class OptionKind : uint8_t { integer, number, boolean, early_stopping, seed };

struct OptionSpec {
  std::string name;
  OptionKind kind;
  // The default as Python writes it ("50", "1.0", "False", "None").
  std::string default_value;
  // Integers: the inclusive range (seeds: 0 .. 2^64 - 1).
  int64_t low = 0;
  int64_t high = 0;
  std::string doc;
};

const std::vector<OptionSpec>& generation_option_specs();

// One option's value as the caller gave it, classified by its binding.
struct OptionValue {
  enum class Type : uint8_t { none, boolean, integer, number, string, other } type = Type::none;
  bool boolean = false;
  // Integers: the value when it fits in int64, else huge (out of every range) or
  // unsigned_value when it fits in uint64.
  int64_t integer = 0;
  bool fits_int64 = true;
  bool fits_uint64 = false;
  uint64_t unsigned_value = 0;
  double number = 0;
  std::string string;
  std::string repr;  // for messages
};

// Options by name -> checked options; max_new_tokens absent or None takes
// default_max_new_tokens (the model's). Throws InvalidArgument.
GenerationOptions parse_generation_options(const std::vector<std::pair<std::string, OptionValue>>& options,
                                           int64_t default_max_new_tokens);

// One generated sequence: tokens after the decoder start token, without EOS or padding.
struct Hypothesis {
  std::vector<int64_t> tokens;
  float score = 0;      // beam search: length-normalized sum of log-probs; else the sum of log-probs
  bool finished = false;  // ended with EOS (false: stopped at max_new_tokens)
  // Greedy search and sampling: the log-prob of each token chosen (EOS
  // included), summed in order into score.
  std::vector<float> token_scores;
};

struct GenerationTimings {
  double queue_ms = 0, vision_ms = 0, encoder_ms = 0, first_token_ms = 0, decode_ms = 0;
  int64_t steps = 0;
};

// Called with (request index, token) as each token of a request is chosen, for
// greedy search and sampling; returning false stops generation early.
using TokenCallback = std::function<bool(int64_t, int64_t)>;

}  // namespace pali
