// Generation on top of the model's encoder output and cached decoder:
// greedy search, sampling, and beam search with transformers' semantics
// (beam scores are sums of log-probs; finished hypotheses are scored
// sum / generated_length ** length_penalty; early_stopping True / False / never).
#pragma once

#include <vector>

#include "generate/decoder.h"
#include "generate/generation_options.h"

namespace pali {

// One list of hypotheses per request, best first: num_return_sequences each.
// The strategy is the options' (num_beams > 1: beam search; do_sample: sampling;
// else greedy); timings->first_token_ms, decode_ms and steps are filled in.
std::vector<std::vector<Hypothesis>> generate(const Decoder& decoder, const GenerationOptions& options,
                                              const TokenCallback& on_token, GenerationTimings* timings);

}  // namespace pali
