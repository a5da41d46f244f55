// The search strategies over a Decoder as GroupSearch step functions: greedy
// search, sampling and beam search, with transformers' semantics; each applies
// the options' logits processors (logits_processors.h) to every row's scores.
// generate() drives one group over a session of its own.
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
// per request when sampling). The group holds only the rows still generating:
// its row i is row live_[i].
class SampleOrGreedySearch final : public GroupSearch {
 public:
  SampleOrGreedySearch(const Decoder& decoder, const GenerationOptions& options, TokenCallback on_token)
      : options_(options),
        on_token_(std::move(on_token)),
        vocab_(decoder.vocab_size()),
        eos_(decoder.special_tokens().eos),
        per_request_(rows_per_request(options)),
        rng_(options.seed),
        processors_(logits_processors(options, eos_)) {
    const int64_t rows = decoder.requests() * per_request_;
    sequences_.resize(rows);
    for (int64_t r = 0; r < rows; ++r) sequences_[r] = decoder.initial_sequence(r / per_request_);
    out_.resize(rows);
    live_.resize(rows);
    std::iota(live_.begin(), live_.end(), 0);
    log_probs_.resize(vocab_);
  }

  int64_t rows() const override { return static_cast<int64_t>(live_.size()); }
  bool done() const override { return live_.empty(); }

  void advance(float* logits, std::vector<int64_t>& sources, std::vector<int64_t>& tokens) override {
    kept_.clear();
    chosen_.resize(live_.size());
    for (int64_t i = 0; i < static_cast<int64_t>(live_.size()); ++i) {
      const int64_t r = live_[i];
      float* row = logits + i * vocab_;
      require_finite_logits(row, vocab_, step_);
      log_softmax(row, 1, vocab_, log_probs_.data());
      processors_.process(r / per_request_, sequences_[r], step_, row, vocab_);
      const int64_t token = options_.do_sample ? sample(row) : std::max_element(row, row + vocab_) - row;
      out_[r].score += log_probs_[token];
      out_[r].token_scores.push_back(log_probs_[token]);
      sequences_[r].push_back(token);
      chosen_[i] = token;
      if (token == eos_) {
        out_[r].finished = true;
        continue;
      }
      out_[r].tokens.push_back(token);
      if (on_token_ && !on_token_(r / per_request_, token)) continue;
      kept_.push_back(i);
    }
    if (++step_ >= options_.max_new_tokens) kept_.clear();
    // kept_[j] >= j: compacting in place reads no entry already overwritten.
    for (size_t j = 0; j < kept_.size(); ++j) {
      live_[j] = live_[kept_[j]];
      sources.push_back(kept_[j]);
      tokens.push_back(chosen_[kept_[j]]);
    }
    live_.resize(kept_.size());
  }

  std::vector<std::vector<Hypothesis>> results() override {
    std::vector<std::vector<Hypothesis>> results(out_.size() / per_request_);
    for (size_t r = 0; r < out_.size(); ++r) results[r / per_request_].push_back(std::move(out_[r]));
    return results;
  }

 private:
  int64_t sample(const float* row) {
    const float top = *std::max_element(row, row + vocab_);
    PALI_CHECK_ARG(std::isfinite(top), "temperature ", options_.temperature,
                   " divides the scores past the float range (the largest becomes ", top,
                   "); use a larger temperature, or do_sample=False for greedy search");
    weights_.resize(vocab_);
    for (int64_t v = 0; v < vocab_; ++v) weights_[v] = std::exp(static_cast<double>(row[v] - top));
    return std::discrete_distribution<int64_t>(weights_.begin(), weights_.end())(rng_);
  }

  GenerationOptions options_;
  TokenCallback on_token_;
  int64_t vocab_, eos_, per_request_, step_ = 0;
  std::mt19937_64 rng_;
  LogitsProcessorList processors_;
  std::vector<std::vector<int64_t>> sequences_;
  std::vector<Hypothesis> out_;
  std::vector<int64_t> live_, kept_, chosen_;
  std::vector<float> log_probs_;
  std::vector<double> weights_;
};

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

// Beam search. Rows are indexed request * beams + beam; the group holds only
// the beams of the requests still searching: group rows
// [i * beams, (i + 1) * beams) are request searching_[i]'s.
class BeamSearch final : public GroupSearch {
 public:
  BeamSearch(const Decoder& decoder, const GenerationOptions& options)
      : options_(options),
        vocab_(decoder.vocab_size()),
        eos_(decoder.special_tokens().eos),
        beams_(options.num_beams),
        requests_(decoder.requests()),
        processors_(logits_processors(options, eos_)) {
    const int64_t rows = requests_ * beams_;
    sequences_.resize(rows);
    prompt_length_.resize(rows);
    for (int64_t r = 0; r < rows; ++r) {
      sequences_[r] = decoder.initial_sequence(r / beams_);
      prompt_length_[r] = sequences_[r].size();
    }
    beam_scores_.assign(rows, 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      if (r % beams_) beam_scores_[r] = -1e9f;
    hypotheses_.assign(requests_, Hypotheses(beams_, options.length_penalty, options.early_stopping,
                                             options.max_new_tokens));
    done_.assign(requests_, false);
    searching_.resize(requests_);
    std::iota(searching_.begin(), searching_.end(), 0);
    scores_.resize(beams_ * vocab_);
    top_values_.resize(2 * beams_);
    top_indices_.resize(2 * beams_);
    next_sequences_.resize(rows);
    next_scores_.resize(rows);
    next_tokens_.resize(rows);
    next_source_.resize(rows);
  }

  int64_t rows() const override { return static_cast<int64_t>(searching_.size()) * beams_; }
  bool done() const override { return searching_.empty(); }

  void advance(float* logits, std::vector<int64_t>& sources, std::vector<int64_t>& tokens) override {
    const int64_t candidates = 2 * beams_, step = step_;
    for (int64_t i = 0; i < static_cast<int64_t>(searching_.size()); ++i) {
      const int64_t b = searching_[i], first = b * beams_, group_first = i * beams_;
      for (int64_t beam = 0; beam < beams_; ++beam) {
        float* row = scores_.data() + beam * vocab_;
        const float* row_logits = logits + (group_first + beam) * vocab_;
        require_finite_logits(row_logits, vocab_, step);
        log_softmax(row_logits, 1, vocab_, row);
        processors_.process(b, sequences_[first + beam], step, row, vocab_);
        for (int64_t v = 0; v < vocab_; ++v) row[v] += beam_scores_[first + beam];
      }
      topk(scores_.data(), 1, beams_ * vocab_, candidates, top_values_.data(), top_indices_.data());
      int64_t filled = 0;
      for (int64_t rank = 0; rank < candidates && filled < beams_; ++rank) {
        const int64_t beam = top_indices_[rank] / vocab_, token = top_indices_[rank] % vocab_;
        const int64_t row = first + beam;
        if (token == eos_) {
          if (rank >= beams_) continue;
          std::vector<int64_t> finished(sequences_[row].begin() + prompt_length_[row], sequences_[row].end());
          hypotheses_[b].add(std::move(finished), top_values_[rank], step + 1, true);
        } else {
          next_source_[first + filled] = group_first + beam;
          next_tokens_[first + filled] = token;
          next_scores_[first + filled] = top_values_[rank];
          next_sequences_[first + filled] = sequences_[row];
          next_sequences_[first + filled].push_back(token);
          ++filled;
        }
      }
      // The bound is the best running beam (transformers >= 4.50), not the step's best candidate, which
      // may have just finished.
      done_[b] = hypotheses_[b].is_done(next_scores_[first], step + 1);
    }
    // Only the searching requests' rows of next_* were written: the others are finished.
    sequences_.swap(next_sequences_);
    beam_scores_.swap(next_scores_);
    generated_ = ++step_;
    still_searching_.clear();
    if (step_ < options_.max_new_tokens)
      for (int64_t b : searching_) {
        if (done_[b]) continue;
        still_searching_.push_back(b);
        for (int64_t beam = 0; beam < beams_; ++beam) {
          sources.push_back(next_source_[b * beams_ + beam]);
          tokens.push_back(next_tokens_[b * beams_ + beam]);
        }
      }
    searching_.swap(still_searching_);
  }

  std::vector<std::vector<Hypothesis>> results() override {
    std::vector<std::vector<Hypothesis>> results(requests_);
    for (int64_t b = 0; b < requests_; ++b) {
      if (!done_[b])
        for (int64_t i = 0; i < beams_; ++i) {
          const int64_t row = b * beams_ + i;
          std::vector<int64_t> running(sequences_[row].begin() + prompt_length_[row], sequences_[row].end());
          hypotheses_[b].add(std::move(running), beam_scores_[row], generated_, false);
        }
      results[b] = hypotheses_[b].best(options_.num_return_sequences);
    }
    return results;
  }

 private:
  GenerationOptions options_;
  int64_t vocab_, eos_, beams_, requests_, step_ = 0, generated_ = 0;
  LogitsProcessorList processors_;
  std::vector<std::vector<int64_t>> sequences_, next_sequences_;
  std::vector<size_t> prompt_length_;
  std::vector<float> beam_scores_, next_scores_, scores_, top_values_;
  std::vector<Hypotheses> hypotheses_;
  std::vector<bool> done_;
  std::vector<int64_t> searching_, still_searching_, top_indices_, next_tokens_, next_source_;
};

}  // namespace

int64_t rows_per_request(const GenerationOptions& options) {
  return options.num_beams > 1 ? options.num_beams : (options.do_sample ? options.num_return_sequences : 1);
}

std::unique_ptr<GroupSearch> make_group_search(const Decoder& decoder, const GenerationOptions& options,
                                               TokenCallback on_token) {
  options.validate();
  if (options.num_beams > 1) return std::make_unique<BeamSearch>(decoder, options);
  return std::make_unique<SampleOrGreedySearch>(decoder, options, std::move(on_token));
}

bool keeps_rows_in_place(const std::vector<int64_t>& sources, int64_t rows) {
  if (static_cast<int64_t>(sources.size()) != rows) return false;
  for (int64_t r = 0; r < rows; ++r)
    if (sources[r] != r) return false;
  return true;
}

std::vector<std::vector<Hypothesis>> generate(const Decoder& decoder, const GenerationOptions& options,
                                              const TokenCallback& on_token, GenerationTimings* timings) {
  options.validate();
  // The session first: it refuses caches larger than the memory left before the search allocates its own.
  std::unique_ptr<DecoderSession> session = decoder.start(rows_per_request(options), options.max_new_tokens);
  std::unique_ptr<GroupSearch> search = make_group_search(decoder, options, on_token);
  std::vector<float> logits(search->rows() * decoder.vocab_size());
  std::vector<int64_t> sources, tokens;
  const auto start = Clock::now();
  session->first(logits.data());
  timings->first_token_ms = ms_between(start, Clock::now());
  for (;;) {
    ++timings->steps;
    const int64_t rows = search->rows();
    sources.clear();
    tokens.clear();
    search->advance(logits.data(), sources, tokens);
    if (search->done()) break;
    // The finished rows stop costing compute from the next step on.
    if (!keeps_rows_in_place(sources, rows)) session->reorder(sources.data(), static_cast<int64_t>(sources.size()));
    session->step(tokens.data(), logits.data());
  }
  timings->decode_ms = ms_between(start, Clock::now());
  return search->results();
}

}  // namespace pali
