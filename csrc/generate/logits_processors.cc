#include "generate/logits_processors.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

namespace pali {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}

void process_scores(const GenerationOptions& options, int64_t eos_token_id, const std::vector<int64_t>& sequence,
                    int64_t generated, float* scores, int64_t vocab) {
  if (options.repetition_penalty != 1.0f) {
    std::unordered_set<int64_t> seen(sequence.begin(), sequence.end());
    for (int64_t token : seen) {
      if (token < 0 || token >= vocab) continue;
      float& s = scores[token];
      s = s < 0 ? s * options.repetition_penalty : s / options.repetition_penalty;
    }
  }
  const int64_t n = options.no_repeat_ngram_size;
  const int64_t len = static_cast<int64_t>(sequence.size());
  if (n > 0 && len + 1 >= n) {
    // Ban every token that would repeat an n-gram: match the last n-1 tokens.
    const int64_t prefix = len - (n - 1);
    for (int64_t start = 0; start + n <= len; ++start) {
      bool match = true;
      for (int64_t k = 0; k < n - 1 && match; ++k) match = sequence[start + k] == sequence[prefix + k];
      if (match) {
        const int64_t banned = sequence[start + n - 1];
        if (banned >= 0 && banned < vocab) scores[banned] = kNegInf;
      }
    }
  }
  if (generated < options.min_new_tokens && eos_token_id >= 0 && eos_token_id < vocab)
    scores[eos_token_id] = kNegInf;
}

void warp_for_sampling(const GenerationOptions& options, float* logits, int64_t vocab) {
  if (options.temperature != 1.0f)
    for (int64_t i = 0; i < vocab; ++i) logits[i] /= options.temperature;
  if (options.top_k > 0 && options.top_k < vocab) {
    std::vector<float> sorted(logits, logits + vocab);
    std::nth_element(sorted.begin(), sorted.begin() + (options.top_k - 1), sorted.end(), std::greater<float>());
    const float threshold = sorted[options.top_k - 1];
    for (int64_t i = 0; i < vocab; ++i)
      if (logits[i] < threshold) logits[i] = kNegInf;
  }
  if (options.top_p < 1.0f) {
    // Keep the smallest set of most likely tokens whose probability reaches top_p.
    std::vector<int64_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
    const float top = logits[order[0]];
    double total = 0;
    for (int64_t i = 0; i < vocab; ++i) total += std::exp(static_cast<double>(logits[i] - top));
    double cumulative = 0;
    int64_t keep = 0;
    while (keep < vocab) {
      cumulative += std::exp(static_cast<double>(logits[order[keep]] - top)) / total;
      ++keep;
      if (cumulative >= options.top_p) break;
    }
    for (int64_t i = keep; i < vocab; ++i) logits[order[i]] = kNegInf;
  }
}

}  // namespace pali
