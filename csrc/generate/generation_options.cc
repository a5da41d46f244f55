#include "generate/generation_options.h"

#include <cmath>

#include "core/error.h"

namespace pali {

void GenerationOptions::validate() const {
  PALI_CHECK_ARG(max_new_tokens > 0, "max_new_tokens must be positive, got ", max_new_tokens);
  // Above max_new_tokens it bans eos for the whole generation, as in transformers.
  PALI_CHECK_ARG(min_new_tokens >= 0, "min_new_tokens must be >= 0, got ", min_new_tokens);
  PALI_CHECK_ARG(num_beams >= 1, "num_beams must be at least 1, got ", num_beams);
  PALI_CHECK_ARG(num_return_sequences >= 1, "num_return_sequences must be at least 1, got ",
                 num_return_sequences);
  PALI_CHECK_ARG(do_sample || num_return_sequences <= num_beams, "num_return_sequences (",
                 num_return_sequences, ") must not exceed num_beams (", num_beams, ")");
  PALI_CHECK_ARG(!(do_sample && num_beams > 1), "do_sample with num_beams > 1 is not supported");
  PALI_CHECK_ARG(no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0, got ", no_repeat_ngram_size);
  PALI_CHECK_ARG(std::isfinite(repetition_penalty) && repetition_penalty > 0,
                 "repetition_penalty must be positive, got ", repetition_penalty);
  PALI_CHECK_ARG(std::isfinite(length_penalty), "length_penalty must be finite");
  PALI_CHECK_ARG(std::isfinite(temperature) && temperature >= 0, "temperature must be >= 0, got ", temperature);
  PALI_CHECK_ARG(!do_sample || temperature > 0, "temperature must be > 0 when do_sample is set");
  PALI_CHECK_ARG(top_k >= 0, "top_k must be >= 0, got ", top_k);
  PALI_CHECK_ARG(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
}

}  // namespace pali
