// The engine's scheduler: continuous batching of every caller's requests.
//
// Callers (Python threads, asyncio tasks through them, the HTTP server, the C
// API) submit requests from any thread; one scheduler thread per model runs
// them all, so the engine's worker threads serve one request stream instead
// of one team per caller fighting for the cores. Each step of the scheduler
// runs every active request together: a new request's prefill (vision tower,
// encoder or prompt) runs between two decode steps, then its rows join the
// shared session (DecoderSession::append); a request that finishes, or whose
// caller cancelled it, leaves at the next step and its rows stop costing
// compute. Requests that arrived together prefill as one batch. Each request
// keeps its own options and search (GroupSearch), and
// streams its tokens as they are chosen. A request that fails (bad input,
// non-finite logits, no memory for its caches) fails alone.
//
// Limits: at most max_batch_rows rows are stepped together (a request larger
// than that runs once the others have left), and at most max_queued requests
// wait; past that submit() throws EngineBusy at once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "generate/generation_options.h"
#include "models/model.h"

namespace pali {

struct SchedulerLimits {
  int64_t max_batch_rows = 64;
  int64_t max_queued = 1024;
};

// A request's inputs, owned: the processor's arrays for `batch` prompts.
struct OwnedPrompts {
  std::vector<float> pixels;
  std::vector<int64_t> input_ids, attention_mask;
  int64_t batch = 0, length = 0;
  PromptBatch view() const { return {pixels.data(), input_ids.data(), attention_mask.data(), batch, length}; }
};

// One generate() call submitted to the scheduler.
class ScheduledRequest {
 public:
  // Blocks until the request has ended; returns its hypotheses (what was
  // generated so far, when it was cancelled) or rethrows its error.
  std::vector<std::vector<Hypothesis>> wait(GenerationTimings* timings);
  // For a streaming request: blocks until tokens have been chosen since the
  // last call, or the request has ended, and moves them to `tokens` as
  // (prompt index, token) pairs. Returns false once the request has ended and
  // every token was taken.
  bool take_tokens(std::vector<std::pair<int64_t, int64_t>>* tokens);
  // take_tokens() without waiting: moves the tokens chosen so far and
  // returns whether the request has ended (then wait() returns at once).
  bool poll_tokens(std::vector<std::pair<int64_t, int64_t>>* tokens);
  // Stops the request at its next step; its rows leave the batch.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  // Stops one prompt's rows: its consumer wants no more tokens than the
  // `kept` it has taken. The scheduler may have chosen more by then; wait()
  // leaves them out (and their log-probs from the score) when the prompt has
  // one row, so the result is what a search stopped right there gives.
  void stop(int64_t prompt, int64_t kept);
  bool stopped(int64_t prompt);

 private:
  friend class Scheduler;
  ScheduledRequest(OwnedPrompts prompts, const GenerationOptions& options, bool stream, int64_t rows_per_prompt,
                   std::function<void()> notify)
      : prompts_(std::move(prompts)),
        options_(options),
        stream_(stream),
        rows_(prompts_.batch * rows_per_prompt),
        rows_per_prompt_(rows_per_prompt),
        notify_(std::move(notify)) {}
  void push_token(int64_t prompt, int64_t token);
  bool ended();
  void finish(std::vector<std::vector<Hypothesis>> results, const GenerationTimings& timings);
  void fail(std::exception_ptr error);

  OwnedPrompts prompts_;
  GenerationOptions options_;
  bool stream_;
  int64_t rows_;  // session rows at the start
  int64_t rows_per_prompt_;
  // Called by the scheduler thread after tokens were pushed and when the
  // request ends (without the request's lock), for a caller that waits on
  // something else than wait(): an asyncio loop's file descriptor.
  std::function<void()> notify_;
  std::atomic<bool> cancelled_{false};
  std::chrono::steady_clock::time_point submitted_ = std::chrono::steady_clock::now();

  std::mutex mutex_;
  std::condition_variable changed_;
  bool ended_ = false;
  std::vector<std::pair<int64_t, int64_t>> pending_;
  std::vector<int64_t> kept_;  // [batch] when any prompt was stopped: its tokens kept, else -1
  std::vector<std::vector<Hypothesis>> results_;
  GenerationTimings timings_;
  std::exception_ptr error_;
};

struct SchedulerStats {
  int64_t active_requests = 0, queued_requests = 0, active_rows = 0, steps = 0;
  int64_t joined_requests = 0;  // requests whose rows joined others already generating
  double prefill_ms = 0, decode_ms = 0;  // the scheduler thread's time in admissions and in steps
};

class Scheduler {
 public:
  // threads: the op threads of the scheduler thread (0: all cores).
  Scheduler(const Model& model, int threads, SchedulerLimits limits);
  // Stops the scheduler thread; requests still queued or running fail with
  // RuntimeFailure("the engine was closed").
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; the options are checked here (InvalidArgument). Throws
  // EngineBusy when max_queued requests are waiting. `notify` (may be empty):
  // called from the scheduler thread whenever the request has new tokens or
  // has ended; it must be cheap and must not call back into the scheduler.
  std::shared_ptr<ScheduledRequest> submit(OwnedPrompts prompts, const GenerationOptions& options, bool stream,
                                           std::function<void()> notify = {});
  SchedulerStats stats() const;
  const SchedulerLimits& limits() const { return limits_; }

 private:
  struct Active;
  void run();
  // Prefills requests that arrived together as one batch (their rows per
  // prompt alike, their prompts padded to the longest) and joins their rows
  // to `session`.
  void admit(const std::vector<std::shared_ptr<ScheduledRequest>>& requests,
             std::unique_ptr<DecoderSession>& session, std::vector<Active>& active, std::vector<int64_t>& tokens);
  // admit(), and when the batch fails, each request on its own: only a bad one fails.
  void admit_or_fail(const std::vector<std::shared_ptr<ScheduledRequest>>& requests,
                     std::unique_ptr<DecoderSession>& session, std::vector<Active>& active,
                     std::vector<int64_t>& tokens);

  const Model& model_;
  const int threads_;
  const SchedulerLimits limits_;

  mutable std::mutex mutex_;
  std::condition_variable work_;
  std::deque<std::shared_ptr<ScheduledRequest>> queue_;
  bool stopping_ = false;
  SchedulerStats stats_;
  std::thread thread_;  // last: started once everything above exists
};

}  // namespace pali
