// The search strategies over a Decoder: greedy search, sampling and beam
// search, with transformers' semantics; each applies the options' logits
// processors (logits_processors.h) to every row's scores.
#include "generate/search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "core/error.h"
#include "generate/logits_processors.h"
#include "ops/softmax_topk.h"

namespace pali {
namespace {

// NaN or infinite logits would make every choice below arbitrary: refuse them.
void require_finite_logits(const float* row, int64_t vocab, int64_t step) {
  bool finite = true;
  for (int64_t i = 0; i < vocab; ++i) finite &= std::isfinite(row[i]);
  if (!finite)
    throw RuntimeFailure(str_cat("the model's logits at generation step ", step,
                                 " are not finite (NaN or infinity): its weights or inputs overflow"));
}

using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Greedy search and sampling: one row per request (num_return_sequences rows
// per request when sampling). The session holds only the rows still
// generating: session row i is row live[i].
std::vector<std::vector<Hypothesis>> sample_or_greedy(const Decoder& decoder, const GenerationOptions& options,
                                                      const TokenCallback& on_token, GenerationTimings* timings) {
  const SpecialTokens special = decoder.special_tokens();
  const int64_t vocab = decoder.vocab_size(), eos = special.eos, requests = decoder.requests();
  const int64_t per_request = options.do_sample ? options.num_return_sequences : 1;
  const int64_t rows = requests * per_request;
  std::unique_ptr<DecoderSession> session = decoder.start(per_request, options.max_new_tokens);
  std::vector<std::vector<int64_t>> sequences(rows);
  for (int64_t r = 0; r < rows; ++r) sequences[r] = decoder.initial_sequence(r / per_request);
  std::vector<Hypothesis> out(rows);
  std::vector<int64_t> live(rows), tokens(rows), kept;
  std::iota(live.begin(), live.end(), 0);
  std::vector<float> logits(rows * vocab), log_probs(vocab);
  std::mt19937_64 rng(options.seed);
  LogitsProcessorList processors = logits_processors(options, eos);
  const auto start = Clock::now();
  for (int64_t step = 0; step < options.max_new_tokens && !live.empty(); ++step) {
    if (step == 0) {
      session->first(logits.data());
      timings->first_token_ms = ms_between(start, Clock::now());
    } else {
      session->step(tokens.data(), logits.data());
    }
    ++timings->steps;
    kept.clear();
    for (int64_t i = 0; i < static_cast<int64_t>(live.size()); ++i) {
      const int64_t r = live[i];
      float* row = logits.data() + i * vocab;
      require_finite_logits(row, vocab, step);
      log_softmax(row, 1, vocab, log_probs.data());
      processors.process(r / per_request, sequences[r], step, row, vocab);
      int64_t token = 0;
      if (options.do_sample) {
        const float top = *std::max_element(row, row + vocab);
        PALI_CHECK_ARG(std::isfinite(top), "temperature ", options.temperature,
                       " divides the scores past the float range (the largest becomes ", top,
                       "); use a larger temperature, or do_sample=False for greedy search");
        std::vector<double> weights(vocab);
        for (int64_t v = 0; v < vocab; ++v) weights[v] = std::exp(static_cast<double>(row[v] - top));
        token = std::discrete_distribution<int64_t>(weights.begin(), weights.end())(rng);
      } else {
        token = std::max_element(row, row + vocab) - row;
      }
      out[r].score += log_probs[token];
      sequences[r].push_back(token);
      tokens[i] = token;
      if (token == eos) {
        out[r].finished = true;
        continue;
      }
      out[r].tokens.push_back(token);
      if (on_token && !on_token(r / per_request, token)) continue;
      kept.push_back(i);
    }
    if (kept.size() == live.size()) continue;
    // kept[j] >= j: compacting in place reads no entry already overwritten.
    for (size_t j = 0; j < kept.size(); ++j) {
      live[j] = live[kept[j]];
      tokens[j] = tokens[kept[j]];
    }
    live.resize(kept.size());
    // The finished rows stop costing compute from the next step on.
    if (!live.empty() && step + 1 < options.max_new_tokens)
      session->reorder(kept.data(), static_cast<int64_t>(kept.size()));
  }
  timings->decode_ms = ms_between(start, Clock::now());
  std::vector<std::vector<Hypothesis>> results(requests);
  for (int64_t r = 0; r < rows; ++r) results[r / per_request].push_back(std::move(out[r]));
  return results;
}

// Finished hypotheses of one request, as transformers' BeamHypotheses.
class Hypotheses {
 public:
  Hypotheses(int64_t num_beams, float length_penalty, EarlyStopping early_stopping, int64_t max_new_tokens)
      : num_beams_(num_beams),
        length_penalty_(length_penalty),
        early_stopping_(early_stopping),
        max_new_tokens_(max_new_tokens) {}

  void add(std::vector<int64_t> tokens, float sum_log_probs, int64_t generated_len, bool finished) {
    const float score = sum_log_probs / std::pow(static_cast<float>(generated_len), length_penalty_);
    if (static_cast<int64_t>(beams_.size()) < num_beams_ || score > worst_score_) {
      beams_.push_back({std::move(tokens), score, finished});
      if (static_cast<int64_t>(beams_.size()) > num_beams_) {
        auto worst = std::min_element(beams_.begin(), beams_.end(),
                                      [](const Hypothesis& a, const Hypothesis& b) { return a.score < b.score; });
        beams_.erase(worst);
      }
      worst_score_ = std::min_element(beams_.begin(), beams_.end(), [](const Hypothesis& a, const Hypothesis& b) {
                       return a.score < b.score;
                     })->score;
    }
  }

  // Whether no running beam can beat the finished ones (cur_len: tokens generated so far).
  bool is_done(float best_sum_log_probs, int64_t cur_len) const {
    if (static_cast<int64_t>(beams_.size()) < num_beams_) return false;
    if (early_stopping_ == EarlyStopping::on) return true;
    // "never" bounds the best running beam at the longest length it could reach.
    const int64_t length = early_stopping_ == EarlyStopping::never && length_penalty_ > 0 ? max_new_tokens_ : cur_len;
    const float highest = best_sum_log_probs / std::pow(static_cast<float>(length), length_penalty_);
    return worst_score_ >= highest;
  }

  std::vector<Hypothesis> best(int64_t n) {
    std::stable_sort(beams_.begin(), beams_.end(),
                     [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
    if (static_cast<int64_t>(beams_.size()) > n) beams_.resize(n);
    return beams_;
  }

 private:
  int64_t num_beams_;
  float length_penalty_;
  EarlyStopping early_stopping_;
  int64_t max_new_tokens_;
  std::vector<Hypothesis> beams_;
  float worst_score_ = 1e9f;
};

// Beam search. Rows are indexed request * beams + beam; the session holds only
// the beams of the requests still searching: session rows
// [i * beams, (i + 1) * beams) are request searching[i]'s.
std::vector<std::vector<Hypothesis>> beam_search(const Decoder& decoder, const GenerationOptions& options,
                                                 GenerationTimings* timings) {
  const SpecialTokens special = decoder.special_tokens();
  const int64_t vocab = decoder.vocab_size(), eos = special.eos, beams = options.num_beams;
  const int64_t requests = decoder.requests(), rows = requests * beams;
  std::unique_ptr<DecoderSession> session = decoder.start(beams, options.max_new_tokens);
  std::vector<std::vector<int64_t>> sequences(rows);
  std::vector<size_t> prompt_length(rows);
  for (int64_t r = 0; r < rows; ++r) {
    sequences[r] = decoder.initial_sequence(r / beams);
    prompt_length[r] = sequences[r].size();
  }
  std::vector<float> beam_scores(rows, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    if (r % beams) beam_scores[r] = -1e9f;
  std::vector<Hypotheses> hypotheses(requests, Hypotheses(beams, options.length_penalty, options.early_stopping, options.max_new_tokens));
  std::vector<bool> done(requests, false);
  std::vector<int64_t> searching(requests), still_searching;
  std::iota(searching.begin(), searching.end(), 0);
  std::vector<int64_t> tokens(rows), source(rows);  // session rows
  std::vector<float> logits(rows * vocab), scores(beams * vocab);
  const int64_t candidates = 2 * beams;
  std::vector<float> top_values(candidates);
  std::vector<int64_t> top_indices(candidates);
  std::vector<std::vector<int64_t>> next_sequences(rows);
  std::vector<float> next_scores(rows);
  std::vector<int64_t> next_tokens(rows), next_source(rows);  // by row; next_source: a session row
  LogitsProcessorList processors = logits_processors(options, eos);

  const auto start = Clock::now();
  int64_t generated = 0;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    if (step == 0) {
      session->first(logits.data());
      timings->first_token_ms = ms_between(start, Clock::now());
    } else {
      session->step(tokens.data(), logits.data());
    }
    ++timings->steps;
    generated = step + 1;
    for (int64_t i = 0; i < static_cast<int64_t>(searching.size()); ++i) {
      const int64_t b = searching[i], first = b * beams, session_first = i * beams;
      for (int64_t beam = 0; beam < beams; ++beam) {
        float* row = scores.data() + beam * vocab;
        const float* row_logits = logits.data() + (session_first + beam) * vocab;
        require_finite_logits(row_logits, vocab, step);
        log_softmax(row_logits, 1, vocab, row);
        processors.process(b, sequences[first + beam], step, row, vocab);
        for (int64_t v = 0; v < vocab; ++v) row[v] += beam_scores[first + beam];
      }
      topk(scores.data(), 1, beams * vocab, candidates, top_values.data(), top_indices.data());
      int64_t filled = 0;
      for (int64_t rank = 0; rank < candidates && filled < beams; ++rank) {
        const int64_t beam = top_indices[rank] / vocab, token = top_indices[rank] % vocab;
        const int64_t row = first + beam;
        if (token == eos) {
          if (rank >= beams) continue;
          std::vector<int64_t> finished(sequences[row].begin() + prompt_length[row], sequences[row].end());
          hypotheses[b].add(std::move(finished), top_values[rank], step + 1, true);
        } else {
          next_source[first + filled] = session_first + beam;
          next_tokens[first + filled] = token;
          next_scores[first + filled] = top_values[rank];
          next_sequences[first + filled] = sequences[row];
          next_sequences[first + filled].push_back(token);
          ++filled;
        }
      }
      // The bound is the best running beam (transformers >= 4.50), not the step's best candidate, which
      // may have just finished.
      done[b] = hypotheses[b].is_done(next_scores[first], step + 1);
    }
    // Only the searching requests' rows of next_* were written: the others are finished.
    sequences.swap(next_sequences);
    beam_scores.swap(next_scores);
    still_searching.clear();
    int64_t session_rows = 0;
    for (int64_t b : searching) {
      if (done[b]) continue;
      still_searching.push_back(b);
      for (int64_t beam = 0; beam < beams; ++beam) {
        source[session_rows] = next_source[b * beams + beam];
        tokens[session_rows] = next_tokens[b * beams + beam];
        ++session_rows;
      }
    }
    searching.swap(still_searching);
    if (searching.empty()) break;
    if (step + 1 < options.max_new_tokens) session->reorder(source.data(), session_rows);
  }
  timings->decode_ms = ms_between(start, Clock::now());

  std::vector<std::vector<Hypothesis>> results(requests);
  for (int64_t b = 0; b < requests; ++b) {
    if (!done[b])
      for (int64_t i = 0; i < beams; ++i) {
        const int64_t row = b * beams + i;
        std::vector<int64_t> running(sequences[row].begin() + prompt_length[row], sequences[row].end());
        hypotheses[b].add(std::move(running), beam_scores[row], generated, false);
      }
    results[b] = hypotheses[b].best(options.num_return_sequences);
  }
  return results;
}

}  // namespace

std::vector<std::vector<Hypothesis>> generate(const Decoder& decoder, const GenerationOptions& options,
                                              const TokenCallback& on_token, GenerationTimings* timings) {
  options.validate();
  if (options.num_beams > 1) return beam_search(decoder, options, timings);
  return sample_or_greedy(decoder, options, on_token, timings);
}

}  // namespace pali
