// Generation on top of the model's encoder output and cached decoder:
// greedy search, sampling, and beam search with transformers' semantics
// (beam scores are sums of log-probs; finished hypotheses are scored
// sum / generated_length ** length_penalty; early_stopping True / False / never).
#pragma once

#include <vector>

#include "generate/generation_options.h"
#include "models/pali_model.h"

namespace pali {

// One list of hypotheses per request, best first: num_return_sequences each.
std::vector<std::vector<Hypothesis>> generate(const PaliModel& model, const EncoderOutput& encoded,
                                              const GenerationOptions& options, const TokenCallback& on_token,
                                              GenerationTimings* timings);

}  // namespace pali
