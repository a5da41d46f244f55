// Logits processors, applied in transformers' order: repetition penalty,
// no-repeat n-grams, minimum length; then, for sampling, temperature, top-k, top-p.
#pragma once

#include <cstdint>
#include <vector>

#include "generate/generation_options.h"

namespace pali {

// scores[V] of one row whose decoder sequence so far (start token included) is `sequence`;
// `generated` tokens were produced so far.
void process_scores(const GenerationOptions& options, int64_t eos_token_id, const std::vector<int64_t>& sequence,
                    int64_t generated, float* scores, int64_t vocab);

// Temperature, top-k and top-p on logits[V], in place (masked entries become -inf).
void warp_for_sampling(const GenerationOptions& options, float* logits, int64_t vocab);

}  // namespace pali
