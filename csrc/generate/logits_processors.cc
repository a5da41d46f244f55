// The logits processors of logits_processors.h, each as transformers computes it.
#include "generate/logits_processors.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

namespace pali {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool in_vocabulary(int64_t token, int64_t vocab) { return token >= 0 && token < vocab; }
}  // namespace

void RepetitionPenalty::process(int64_t, const std::vector<int64_t>& sequence, int64_t, float* scores, int64_t vocab) {
  // Each distinct token once, however often it occurs.
  seen_.resize(vocab, 0);
  for (int64_t token : sequence) {
    if (!in_vocabulary(token, vocab) || seen_[token]) continue;
    seen_[token] = 1;
    float& s = scores[token];
    s = s < 0 ? s * penalty_ : s / penalty_;
  }
  for (int64_t token : sequence)
    if (in_vocabulary(token, vocab)) seen_[token] = 0;
}

void NoRepeatNGram::process(int64_t, const std::vector<int64_t>& sequence, int64_t, float* scores, int64_t vocab) {
  const int64_t len = static_cast<int64_t>(sequence.size());
  if (len + 1 < n_) return;
  // Match the last n-1 tokens against every earlier n-gram's first n-1.
  const int64_t prefix = len - (n_ - 1);
  for (int64_t start = 0; start + n_ <= len; ++start) {
    bool match = true;
    for (int64_t k = 0; k < n_ - 1 && match; ++k) match = sequence[start + k] == sequence[prefix + k];
    if (match) {
      const int64_t banned = sequence[start + n_ - 1];
      if (in_vocabulary(banned, vocab)) scores[banned] = kNegInf;
    }
  }
}

void MinNewTokens::process(int64_t, const std::vector<int64_t>&, int64_t generated, float* scores, int64_t vocab) {
  if (generated < min_new_tokens_ && in_vocabulary(eos_, vocab)) scores[eos_] = kNegInf;
}

void Temperature::process(int64_t, const std::vector<int64_t>&, int64_t, float* scores, int64_t vocab) {
  for (int64_t i = 0; i < vocab; ++i) scores[i] /= temperature_;
}

void TopK::process(int64_t, const std::vector<int64_t>&, int64_t, float* scores, int64_t vocab) {
  if (k_ >= vocab) return;
  sorted_.assign(scores, scores + vocab);
  std::nth_element(sorted_.begin(), sorted_.begin() + (k_ - 1), sorted_.end(), std::greater<float>());
  const float threshold = sorted_[k_ - 1];
  for (int64_t i = 0; i < vocab; ++i)
    if (scores[i] < threshold) scores[i] = kNegInf;
}

void TopP::process(int64_t, const std::vector<int64_t>&, int64_t, float* scores, int64_t vocab) {
  order_.resize(vocab);
  std::iota(order_.begin(), order_.end(), 0);
  std::stable_sort(order_.begin(), order_.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  const float top = scores[order_[0]];
  double total = 0;
  for (int64_t i = 0; i < vocab; ++i) total += std::exp(static_cast<double>(scores[i] - top));
  double cumulative = 0;
  int64_t keep = 0;
  while (keep < vocab) {
    cumulative += std::exp(static_cast<double>(scores[order_[keep]] - top)) / total;
    ++keep;
    if (cumulative >= top_p_) break;
  }
  for (int64_t i = keep; i < vocab; ++i) scores[order_[i]] = kNegInf;
}

LogitsProcessorList logits_processors(const GenerationOptions& options, int64_t eos_token_id) {
  LogitsProcessorList list;
  if (options.repetition_penalty != 1.0f) list.add(std::make_unique<RepetitionPenalty>(options.repetition_penalty));
  if (options.no_repeat_ngram_size > 0) list.add(std::make_unique<NoRepeatNGram>(options.no_repeat_ngram_size));
  if (options.min_new_tokens > 0) list.add(std::make_unique<MinNewTokens>(options.min_new_tokens, eos_token_id));
  if (options.do_sample) {
    if (options.temperature != 1.0f) list.add(std::make_unique<Temperature>(options.temperature));
    if (options.top_k > 0) list.add(std::make_unique<TopK>(options.top_k));
    if (options.top_p < 1.0f) list.add(std::make_unique<TopP>(options.top_p));
  }
  return list;
}

}  // namespace pali
