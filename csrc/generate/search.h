// Generation on top of a model's Decoder: greedy search, sampling, and beam
// search with transformers' semantics (beam scores are sums of log-probs;
// finished hypotheses are scored sum / generated_length ** length_penalty;
// early_stopping True / False / never).
//
// A GroupSearch is the search of one group of requests that share options (one
// generate() call), written as a step function over its rows of a session:
// given their logits it chooses the next tokens and says which rows continue,
// from which. generate() drives one group over its own session; the scheduler
// (generate/scheduler.h) drives many groups over one shared session, so that
// every step computes all of them together.
#pragma once

#include <memory>
#include <vector>

#include "generate/decoder.h"
#include "generate/generation_options.h"

namespace pali {

class GroupSearch {
 public:
  virtual ~GroupSearch() = default;
  // Session rows the group holds now; they are contiguous in the session.
  virtual int64_t rows() const = 0;
  // Reads (and overwrites) the next-token logits of the group's rows, float32[rows(), vocab]
  // (the first call: those of the first generated position), and chooses.
  // For each row that goes on it appends the group row it continues from
  // (0 .. rows() - 1) to `sources` and its next input token to `tokens`;
  // afterwards rows() is the number it appended. Throws RuntimeFailure on
  // non-finite logits, InvalidArgument on scores the options overflow.
  virtual void advance(float* logits, std::vector<int64_t>& sources, std::vector<int64_t>& tokens) = 0;
  // True once nothing is left to generate (then rows() is 0).
  virtual bool done() const = 0;
  // Once done: one list of hypotheses per request, best first, num_return_sequences each.
  virtual std::vector<std::vector<Hypothesis>> results() = 0;
};

// Whether `sources` (a step's continuing rows) keep all `rows` rows in place:
// then the session needs no reorder.
bool keeps_rows_in_place(const std::vector<int64_t>& sources, int64_t rows);

// Session rows each request starts with under these options: num_beams for
// beam search, num_return_sequences when sampling, else 1.
int64_t rows_per_request(const GenerationOptions& options);

// The options' strategy (num_beams > 1: beam search; do_sample: sampling; else
// greedy) over the requests of `decoder`. on_token (greedy search and sampling)
// is called as each token is chosen; returning false ends that row.
std::unique_ptr<GroupSearch> make_group_search(const Decoder& decoder, const GenerationOptions& options,
                                               TokenCallback on_token);

// One group over a session of its own; timings->first_token_ms, decode_ms and
// steps are filled in.
std::vector<std::vector<Hypothesis>> generate(const Decoder& decoder, const GenerationOptions& options,
                                              const TokenCallback& on_token, GenerationTimings* timings);

}  // namespace pali
