// The decoder interface every search strategy works over.
//
// A model's decoder, for one batch of requests, opens a session of requests x
// rows_per_request rows (beams, or independent samples): whatever it computes
// once per request (an encoder output, a prompt's keys and values) is shared by
// that request's rows, never copied per row. The session gives the logits of
// the first generated position, then extends every row by one token per step;
// between steps the strategy may reorder the rows and drop those that
// finished, so that a step computes only the rows still generating, and a
// session of other requests may join (continuous batching: the scheduler,
// generate/scheduler.h, steps every running request together). Greedy
// search, sampling and beam search (generate/search.h) see only this, so an
// architecture that implements it gets every strategy, and a strategy written
// against it runs on every architecture.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace pali {

struct SpecialTokens {
  int64_t eos = 1;
  int64_t pad = 0;
};

class DecoderSession {
 public:
  virtual ~DecoderSession() = default;
  // The logits of every row's first generated token, float32[rows, vocab].
  virtual void first(float* logits) = 0;
  // Appends tokens[rows] (one per row) and writes the next-token logits float32[rows, vocab].
  virtual void step(const int64_t* tokens, float* logits) = 0;
  // The session goes on with `rows` rows, at most as many as it has: row r
  // continues from the state row source[r] had, and serves that row's request
  // (beam search's reordering; rows that finished are left out, so later steps
  // no longer compute them). Sources may repeat; each must be a current row.
  virtual void reorder(const int64_t* source, int64_t rows) = 0;
  // Adds the rows of `other` after this session's rows, for the steps to come:
  // `other` comes from the same model, has given its first logits and been
  // reordered for its next step, and is left empty. Every row goes on as it
  // would alone (its own history, positions and prompt). Throws
  // InvalidArgument for a session of another model, OutOfMemory when the
  // joined caches would not fit.
  virtual void append(DecoderSession& other) = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual int64_t requests() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual SpecialTokens special_tokens() const = 0;
  // The sequence a request's rows start from, as the logits processors see it
  // (transformers: the decoder start token of an encoder-decoder model, the
  // whole padded prompt of a decoder-only one); hypotheses are what follows it.
  virtual std::vector<int64_t> initial_sequence(int64_t request) const = 0;
  // A session of requests() * rows_per_request rows (row r serves request
  // r / rows_per_request until a reorder) holding up to `capacity` generated
  // tokens per row.
  // Throws OutOfMemory when its caches would not fit in the memory left.
  virtual std::unique_ptr<DecoderSession> start(int64_t rows_per_request, int64_t capacity) const = 0;
};

}  // namespace pali
