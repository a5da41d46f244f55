#include "models/model.h"

#include <chrono>

#include "generate/search.h"

namespace pali {

std::vector<std::vector<Hypothesis>> Model::generate(const PromptBatch& prompts, const GenerationOptions& options,
                                                     const TokenCallback& on_token,
                                                     GenerationTimings* timings) const {
  options.validate();
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<PreparedDecoder> decoder = prepare(prompts);
  auto results = pali::generate(*decoder, options, on_token, timings);
  const double total =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  timings->vision_ms = decoder->vision_ms;
  timings->encoder_ms = std::max(0.0, total - decoder->vision_ms - timings->decode_ms);
  return results;
}

}  // namespace pali
