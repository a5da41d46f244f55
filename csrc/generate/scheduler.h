// The engine's scheduler: continuous batching of every caller's requests.
//
// Callers (Python threads, asyncio tasks through them, the HTTP server, the C
// API) submit requests from any thread; two threads per model run them all,
// so the engine's worker threads serve two request streams instead of one
// team per caller fighting for the cores:
//  * the decode thread steps every active request together; between two
//    steps prefilled requests' rows join the shared session
//    (DecoderSession::append); a request that finishes, or whose caller
//    cancelled it, leaves at the next step and its rows stop costing compute;
//  * while the decode thread steps, the prefill thread takes every queued
//    request that fits and runs their prefill (vision tower, encoder or
//    prompt, and the first token) as one batch, for the decode thread to
//    join; when the decode thread has nothing to step, it takes and prefills
//    queued requests itself (a lone request is not handed from thread to
//    thread).
// Why two: a prefill costs as much as tens of decode steps, so on one thread
// every arrival stalled the decoding of all the others, and requests that
// arrived one by one prefilled one by one. Now decoding goes on while the
// next requests prefill, and the requests that arrive during one prefill are
// the next one's batch; the two threads' ops share the thread pool (a call
// that finds it busy runs on its own thread), so with several callers both
// cores compute. Each request keeps its own options and search
// (GroupSearch), and streams its tokens as they are chosen. A request that
// fails (bad input, non-finite logits, no memory for its caches) fails alone.
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
  int64_t prefills = 0;          // prefill batches run
  double prefill_ms = 0, decode_ms = 0;  // the prefill thread's time in prefills, the decode thread's in steps
};

class Scheduler {
 public:
  // threads: the op threads of each of the scheduler's threads (0: all cores).
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
  struct Admission;
  void run_prefills();
  void run_decoding();
  // With mutex_ held: whether the first queued request fits beside the rows
  // running, prefilling and `taken`; take_queued moves those that fit out of
  // the queue (counted in prefill_rows_) and returns them with their rows.
  bool queued_fits(int64_t taken) const;
  std::vector<std::shared_ptr<ScheduledRequest>> take_queued(int64_t* taken_rows);
  // Prefills requests taken together, batched as prefill() batches them; the
  // first admission carries their taken rows.
  std::vector<Admission> prefill_taken(std::vector<std::shared_ptr<ScheduledRequest>> taken, int64_t taken_rows);
  // Prefills requests that arrived together as one batch (their rows per
  // prompt alike, their prompts padded to the longest) up to their first
  // token; the requests that go on are in the returned admission.
  Admission prefill(const std::vector<std::shared_ptr<ScheduledRequest>>& requests);
  // prefill(), and when the batch fails, each request on its own: only a bad one fails.
  void prefill_or_fail(const std::vector<std::shared_ptr<ScheduledRequest>>& requests,
                       std::vector<Admission>& admissions);
  // The decode thread: an admission's rows join `session`.
  void join(Admission& admission, std::unique_ptr<DecoderSession>& session, std::vector<Active>& active,
            std::vector<int64_t>& tokens);

  const Model& model_;
  const int threads_;
  const SchedulerLimits limits_;

  mutable std::mutex mutex_;
  std::condition_variable prefill_work_;  // the prefill thread: a request queued, or rows freed
  std::condition_variable decode_work_;   // the decode thread: an admission ready, or a request queued
  std::deque<std::shared_ptr<ScheduledRequest>> queue_;
  std::vector<Admission> ready_;  // prefilled, waiting to join the decode batch
  int64_t decoding_rows_ = 0;     // rows the decode thread steps
  int64_t prefill_rows_ = 0;      // rows taken from the queue and not yet joined (prefilling or ready)
  // The op threads of each thread's ops, read at every op: while the other
  // thread computes, 1 (each on its own core, instead of three threads on
  // two cores), else `threads`.
  std::atomic<int> prefill_op_threads_, decode_op_threads_;
  bool stopping_ = false;
  SchedulerStats stats_;
  std::thread prefill_thread_, decode_thread_;  // last: started once everything above exists
};

}  // namespace pali
