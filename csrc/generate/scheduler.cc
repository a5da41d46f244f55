// The scheduler of scheduler.h: a prefill thread that prefills queued requests
// in batches, and a decode thread that joins them between decode steps and
// steps every active request together.
#include "generate/scheduler.h"

#include <algorithm>

#include "core/error.h"
#include "core/parallel.h"
#include "generate/search.h"

namespace pali {
namespace {

using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}


}  // namespace

std::vector<std::vector<Hypothesis>> ScheduledRequest::wait(GenerationTimings* timings) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return ended_; });
  if (error_) std::rethrow_exception(error_);
  if (timings) *timings = timings_;
  for (size_t prompt = 0; prompt < kept_.size() && prompt < results_.size(); ++prompt) {
    if (kept_[prompt] < 0 || results_[prompt].size() != 1) continue;
    Hypothesis& h = results_[prompt][0];
    const size_t kept = static_cast<size_t>(kept_[prompt]);
    // A stop after the last token still drops the EOS chosen after it.
    if (kept > h.tokens.size() || kept > h.token_scores.size() || (kept == h.tokens.size() && !h.finished)) continue;
    h.tokens.resize(kept);
    h.token_scores.resize(kept);
    h.score = 0;
    for (float s : h.token_scores) h.score += s;
    h.finished = false;
  }
  return results_;
}

bool ScheduledRequest::take_tokens(std::vector<std::pair<int64_t, int64_t>>* tokens) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return ended_ || !pending_.empty(); });
  tokens->insert(tokens->end(), pending_.begin(), pending_.end());
  const bool any = !pending_.empty();
  pending_.clear();
  return any || !ended_;
}

bool ScheduledRequest::poll_tokens(std::vector<std::pair<int64_t, int64_t>>* tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  tokens->insert(tokens->end(), pending_.begin(), pending_.end());
  pending_.clear();
  return ended_;
}

void ScheduledRequest::stop(int64_t prompt, int64_t kept) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (kept_.empty()) kept_.assign(prompts_.batch, -1);
  if (prompt >= 0 && prompt < prompts_.batch && kept_[prompt] < 0) kept_[prompt] = kept;
}

bool ScheduledRequest::stopped(int64_t prompt) {
  std::lock_guard<std::mutex> lock(mutex_);
  return !kept_.empty() && prompt >= 0 && prompt < prompts_.batch && kept_[prompt] >= 0;
}

bool ScheduledRequest::ended() {
  std::lock_guard<std::mutex> lock(mutex_);
  return ended_;
}

void ScheduledRequest::push_token(int64_t prompt, int64_t token) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.emplace_back(prompt, token);
  }
  changed_.notify_all();
  if (notify_) notify_();
}

void ScheduledRequest::finish(std::vector<std::vector<Hypothesis>> results, const GenerationTimings& timings) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    results_ = std::move(results);
    timings_ = timings;
    ended_ = true;
  }
  changed_.notify_all();
  if (notify_) notify_();
}

void ScheduledRequest::fail(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::move(error);
    ended_ = true;
  }
  changed_.notify_all();
  if (notify_) notify_();
}

// A request being generated: its search over its rows of the shared session.
struct Scheduler::Active {
  std::shared_ptr<ScheduledRequest> request;
  std::unique_ptr<GroupSearch> search;
  GenerationTimings timings;
  Clock::time_point first_token;
};

// Requests prefilled together, up to their first token, for the decode thread to join.
struct Scheduler::Admission {
  std::unique_ptr<DecoderSession> session;  // the rows of `active`, in their order; null when none goes on
  std::vector<Active> active;
  std::vector<int64_t> tokens;  // each row's next input token
  int64_t taken_rows = 0;       // the rows taken from the queue for these requests (prefill_rows_)
};

Scheduler::Scheduler(const Model& model, int threads, SchedulerLimits limits)
    : model_(model), threads_(threads), limits_(limits), prefill_op_threads_(threads), decode_op_threads_(threads) {
  PALI_CHECK_ARG(limits.max_batch_rows >= 1, "max_batch must be >= 1, got ", limits.max_batch_rows);
  PALI_CHECK_ARG(limits.max_queued >= 0, "max_queue must be >= 0, got ", limits.max_queued);
  decode_thread_ = std::thread([this] { run_decoding(); });
  prefill_thread_ = std::thread([this] { run_prefills(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  prefill_work_.notify_all();
  decode_work_.notify_all();
  prefill_thread_.join();
  decode_thread_.join();
  // What neither thread got to: admissions not joined, requests not taken.
  const auto closed = std::make_exception_ptr(RuntimeFailure("the engine was closed"));
  std::lock_guard<std::mutex> lock(mutex_);
  for (Admission& admission : ready_)
    for (Active& a : admission.active) a.request->fail(closed);
  ready_.clear();
  for (auto& request : queue_) request->fail(closed);
  queue_.clear();
}

std::shared_ptr<ScheduledRequest> Scheduler::submit(OwnedPrompts prompts, const GenerationOptions& options,
                                                    bool stream, std::function<void()> notify) {
  options.validate();
  PALI_CHECK_ARG(prompts.batch > 0 && prompts.length >= 0, "a request needs at least one prompt");
  std::shared_ptr<ScheduledRequest> request(
      new ScheduledRequest(std::move(prompts), options, stream, rows_per_request(options), std::move(notify)));
  bool decoding = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) throw RuntimeFailure("the engine was closed");
    if (static_cast<int64_t>(queue_.size()) >= limits_.max_queued)
      throw EngineBusy(str_cat("the engine is full: ", queue_.size(), " requests are waiting (max_queue=",
                               limits_.max_queued, "); retry later"));
    queue_.push_back(request);
    stats_.queued_requests = static_cast<int64_t>(queue_.size());
    // The prefill thread takes requests only beside a decode thread that steps; an idle one takes its own.
    decoding = decoding_rows_ > 0;
  }
  if (decoding)
    prefill_work_.notify_one();
  else
    decode_work_.notify_one();
  return request;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

// Some of a decoder's requests, as one request's search sees them: without
// the padding they took to prefill beside longer prompts (a decoder-only
// model's initial sequence is its padded prompt), so that the logits
// processors see what they see when the request runs alone.
class DecoderSlice final : public Decoder {
 public:
  DecoderSlice(const Decoder& inner, int64_t first, int64_t count, int64_t added_padding, bool left)
      : inner_(inner), first_(first), count_(count), added_padding_(added_padding), left_(left) {}
  int64_t requests() const override { return count_; }
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  SpecialTokens special_tokens() const override { return inner_.special_tokens(); }
  std::vector<int64_t> initial_sequence(int64_t request) const override {
    std::vector<int64_t> sequence = inner_.initial_sequence(first_ + request);
    if (left_ && added_padding_ > 0 && added_padding_ < static_cast<int64_t>(sequence.size()))
      sequence.erase(sequence.begin(), sequence.begin() + added_padding_);
    return sequence;
  }
  std::unique_ptr<DecoderSession> start(int64_t, int64_t) const override {
    throw RuntimeFailure("a slice of a prepared batch starts no session of its own");
  }

 private:
  const Decoder& inner_;
  int64_t first_, count_, added_padding_;
  bool left_;
};

Scheduler::Admission Scheduler::prefill(const std::vector<std::shared_ptr<ScheduledRequest>>& requests) {
  const Clock::time_point start = Clock::now();
  const OwnedPrompts* prompts = &requests.front()->prompts_;
  OwnedPrompts joined;
  int64_t capacity = 0;
  for (const auto& request : requests) capacity = std::max(capacity, request->options_.max_new_tokens);
  const Model::PromptPadding padding = model_.prompt_padding();
  if (requests.size() > 1) {
    // One batch, every prompt padded to the longest as the model's processor pads.
    for (const auto& request : requests) joined.length = std::max(joined.length, request->prompts_.length);
    for (const auto& request : requests) {
      const OwnedPrompts& p = request->prompts_;
      const int64_t pad = joined.length - p.length;
      joined.batch += p.batch;
      joined.pixels.insert(joined.pixels.end(), p.pixels.begin(), p.pixels.end());
      for (int64_t b = 0; b < p.batch; ++b) {
        const auto ids = p.input_ids.begin() + b * p.length, mask = p.attention_mask.begin() + b * p.length;
        if (padding.left) {
          joined.input_ids.insert(joined.input_ids.end(), pad, padding.pad_token_id);
          joined.attention_mask.insert(joined.attention_mask.end(), pad, 0);
        }
        joined.input_ids.insert(joined.input_ids.end(), ids, ids + p.length);
        joined.attention_mask.insert(joined.attention_mask.end(), mask, mask + p.length);
        if (!padding.left) {
          joined.input_ids.insert(joined.input_ids.end(), pad, padding.pad_token_id);
          joined.attention_mask.insert(joined.attention_mask.end(), pad, 0);
        }
      }
    }
    prompts = &joined;
  }
  std::unique_ptr<PreparedDecoder> decoder = model_.prepare(prompts->view());
  // The session first: it refuses caches larger than the memory left before the searches allocate theirs.
  std::unique_ptr<DecoderSession> joining = decoder->start(requests.front()->rows_per_prompt_, capacity);
  std::vector<Active> admitted;
  std::vector<DecoderSlice> slices;
  slices.reserve(requests.size());
  int64_t first_prompt = 0;
  for (const auto& request : requests) {
    Active a;
    a.request = request;
    a.timings.queue_ms = ms_between(request->submitted_, start);
    slices.emplace_back(*decoder, first_prompt, request->prompts_.batch, prompts->length - request->prompts_.length,
                        padding.left);
    first_prompt += request->prompts_.batch;
    ScheduledRequest* target = request.get();
    TokenCallback on_token;
    if (request->stream_)
      on_token = [target](int64_t prompt, int64_t token) {
        target->push_token(prompt, token);
        return !target->cancelled() && !target->stopped(prompt);
      };
    a.search = make_group_search(slices.back(), request->options_, std::move(on_token));
    admitted.push_back(std::move(a));
  }
  const Clock::time_point prepared = Clock::now();
  const double encoder_ms = std::max(0.0, ms_between(start, prepared) - decoder->vision_ms);
  int64_t rows = 0;
  for (const Active& a : admitted) rows += a.search->rows();
  std::vector<float> logits(rows * decoder->vocab_size());
  joining->first(logits.data());
  const Clock::time_point first_token = Clock::now();
  Admission admission;
  std::vector<int64_t> sources, group_sources;
  int64_t offset = 0;
  for (Active& a : admitted) {
    a.timings.vision_ms = decoder->vision_ms;
    a.timings.encoder_ms = encoder_ms;
    a.timings.first_token_ms = ms_between(prepared, first_token);
    a.timings.steps = 1;
    a.first_token = first_token;
    const int64_t group_rows = a.search->rows();
    group_sources.clear();
    try {
      a.search->advance(logits.data() + offset * decoder->vocab_size(), group_sources, admission.tokens);
    } catch (...) {
      a.request->fail(std::current_exception());
      a.request.reset();
      admission.tokens.resize(sources.size());
      offset += group_rows;
      continue;
    }
    if (a.search->done() || a.request->cancelled()) {
      a.timings.decode_ms = ms_between(prepared, Clock::now());
      a.request->finish(a.search->results(), a.timings);
      a.request.reset();
      admission.tokens.resize(sources.size());
    } else {
      for (int64_t s : group_sources) sources.push_back(offset + s);
    }
    offset += group_rows;
  }
  if (sources.empty()) return admission;
  if (!keeps_rows_in_place(sources, rows)) joining->reorder(sources.data(), static_cast<int64_t>(sources.size()));
  admission.session = std::move(joining);
  for (Active& a : admitted)
    if (a.request) admission.active.push_back(std::move(a));
  return admission;
}

void Scheduler::prefill_or_fail(const std::vector<std::shared_ptr<ScheduledRequest>>& requests,
                                std::vector<Admission>& admissions) {
  try {
    admissions.push_back(prefill(requests));
    return;
  } catch (...) {
    if (requests.size() == 1) {
      requests.front()->fail(std::current_exception());
      return;
    }
  }
  for (const auto& request : requests) {
    if (request->ended()) continue;  // it ended within the batch, before the failure
    try {
      admissions.push_back(prefill({request}));
    } catch (...) {
      request->fail(std::current_exception());
    }
  }
}

bool Scheduler::queued_fits(int64_t taken) const {
  // Requests join in the order they came while their rows fit; the first
  // always runs when nothing else does, however many rows it has.
  const int64_t rows = decoding_rows_ + prefill_rows_ + taken;
  return !queue_.empty() && (rows == 0 || rows + queue_.front()->rows_ <= limits_.max_batch_rows);
}

std::vector<std::shared_ptr<ScheduledRequest>> Scheduler::take_queued(int64_t* taken_rows) {
  std::vector<std::shared_ptr<ScheduledRequest>> taken;
  *taken_rows = 0;
  while (queued_fits(*taken_rows)) {
    *taken_rows += queue_.front()->rows_;
    taken.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  prefill_rows_ += *taken_rows;
  stats_.queued_requests = static_cast<int64_t>(queue_.size());
  return taken;
}

std::vector<Scheduler::Admission> Scheduler::prefill_taken(std::vector<std::shared_ptr<ScheduledRequest>> taken,
                                                           int64_t taken_rows) {
  const Clock::time_point prefilling = Clock::now();
  // Requests taken together run their prefill as one batch (their prompts
  // padded to the longest) when their rows per prompt are alike.
  std::vector<std::vector<std::shared_ptr<ScheduledRequest>>> batches;
  for (auto& request : taken) {
    if (request->cancelled()) {
      request->finish({}, {});
      continue;
    }
    auto fits = [&](const std::vector<std::shared_ptr<ScheduledRequest>>& batch) {
      const ScheduledRequest& other = *batch.front();
      return other.rows_per_prompt_ == request->rows_per_prompt_ &&
             other.prompts_.pixels.size() / other.prompts_.batch ==
                 request->prompts_.pixels.size() / request->prompts_.batch;
    };
    auto batch = std::find_if(batches.begin(), batches.end(), fits);
    if (batch == batches.end())
      batches.push_back({std::move(request)});
    else
      batch->push_back(std::move(request));
  }
  std::vector<Admission> admissions;
  for (const auto& batch : batches) prefill_or_fail(batch, admissions);
  // The rows taken go with the admissions: the decode thread counts them as its own when it joins them.
  if (admissions.empty()) admissions.emplace_back();
  admissions.front().taken_rows = taken_rows;
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.prefill_ms += ms_between(prefilling, Clock::now());
  stats_.prefills += static_cast<int64_t>(batches.size());
  return admissions;
}

void Scheduler::run_prefills() {
  ScopedOpThreadsSource op_threads(prefill_op_threads_);
  for (;;) {
    decode_op_threads_ = threads_;
    std::vector<std::shared_ptr<ScheduledRequest>> taken;
    int64_t taken_rows = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Only beside a decode thread that is stepping: an idle one prefills for itself.
      prefill_work_.wait(lock, [&] { return stopping_ || (decoding_rows_ > 0 && queued_fits(0)); });
      if (stopping_) break;
      taken = take_queued(&taken_rows);
    }
    decode_op_threads_ = 1;
    std::vector<Admission> admissions = prefill_taken(std::move(taken), taken_rows);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (Admission& admission : admissions) ready_.push_back(std::move(admission));
    }
    decode_work_.notify_one();
  }
}

void Scheduler::join(Admission& admission, std::unique_ptr<DecoderSession>& session, std::vector<Active>& active,
                     std::vector<int64_t>& tokens) {
  if (!admission.session) return;
  // A request cancelled while it waited to join leaves at the next step, as any other.
  if (session) {
    session->append(*admission.session);
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.joined_requests += static_cast<int64_t>(admission.active.size());
  } else {
    session = std::move(admission.session);
  }
  tokens.insert(tokens.end(), admission.tokens.begin(), admission.tokens.end());
  for (Active& a : admission.active) active.push_back(std::move(a));
}

void Scheduler::run_decoding() {
  ScopedOpThreadsSource op_threads(decode_op_threads_);
  std::unique_ptr<DecoderSession> session;  // every active request's rows, in the order of `active`
  std::vector<Active> active, still_active;
  std::vector<int64_t> tokens, next_tokens, sources, group_sources, group_tokens;
  std::vector<float> logits;
  std::vector<Admission> admissions;
  const int64_t vocab = model_.vocab_size();
  // The decode batch's rows now, for the prefill thread's limit; it is woken when queued requests fit.
  const auto publish_rows = [&](int64_t joined_rows) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      prefill_rows_ -= joined_rows;
      decoding_rows_ = static_cast<int64_t>(tokens.size());
      stats_.active_requests = static_cast<int64_t>(active.size());
      stats_.active_rows = decoding_rows_;
      wake = decoding_rows_ > 0 && queued_fits(0);
    }
    if (wake) prefill_work_.notify_one();
  };
  for (;;) {
    std::vector<std::shared_ptr<ScheduledRequest>> taken;
    int64_t taken_rows = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (active.empty()) {
        prefill_op_threads_ = threads_;
        decode_work_.wait(lock, [&] { return stopping_ || !ready_.empty() || queued_fits(0); });
        if (!stopping_ && ready_.empty()) taken = take_queued(&taken_rows);
      }
      if (stopping_) break;
      admissions.swap(ready_);
    }
    prefill_op_threads_ = 1;
    if (!taken.empty()) admissions = prefill_taken(std::move(taken), taken_rows);
    int64_t joined_rows = 0;
    for (Admission& admission : admissions) {
      joined_rows += admission.taken_rows;
      try {
        join(admission, session, active, tokens);
      } catch (...) {
        // Joining needs memory for the larger caches: without it, the admission's requests fail.
        for (Active& a : admission.active)
          if (a.request) a.request->fail(std::current_exception());
      }
    }
    admissions.clear();
    if (active.empty()) {
      session.reset();
      tokens.clear();
    }
    if (joined_rows > 0 || active.empty()) publish_rows(joined_rows);
    if (active.empty()) continue;

    const int64_t rows = static_cast<int64_t>(tokens.size());
    logits.resize(rows * vocab);
    const Clock::time_point stepping = Clock::now();
    try {
      session->step(tokens.data(), logits.data());
    } catch (...) {
      // A step of the whole batch failed (no memory for a scratch buffer): so do its requests.
      for (Active& a : active) a.request->fail(std::current_exception());
      active.clear();
      session.reset();
      tokens.clear();
      publish_rows(0);
      continue;
    }
    sources.clear();
    next_tokens.clear();
    still_active.clear();
    int64_t offset = 0;
    const Clock::time_point now = Clock::now();
    for (Active& a : active) {
      const int64_t group_rows = a.search->rows();
      group_sources.clear();
      group_tokens.clear();
      bool failed = false;
      if (!a.request->cancelled()) {
        try {
          ++a.timings.steps;
          a.search->advance(logits.data() + offset * vocab, group_sources, group_tokens);
        } catch (...) {
          a.request->fail(std::current_exception());
          failed = true;
        }
      }
      if (!failed && (a.request->cancelled() || a.search->done())) {
        a.timings.decode_ms = ms_between(a.first_token, now) + a.timings.first_token_ms;
        a.request->finish(a.search->results(), a.timings);
        failed = true;
      }
      if (!failed) {
        for (int64_t s : group_sources) sources.push_back(offset + s);
        next_tokens.insert(next_tokens.end(), group_tokens.begin(), group_tokens.end());
        still_active.push_back(std::move(a));
      }
      offset += group_rows;
    }
    active.swap(still_active);
    tokens.swap(next_tokens);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.steps;
      stats_.decode_ms += ms_between(stepping, Clock::now());
    }
    if (active.empty()) {
      session.reset();
      tokens.clear();
    } else if (!keeps_rows_in_place(sources, rows)) {
      try {
        session->reorder(sources.data(), static_cast<int64_t>(sources.size()));
      } catch (...) {
        for (Active& a : active) a.request->fail(std::current_exception());
        active.clear();
        session.reset();
        tokens.clear();
      }
    }
    publish_rows(0);
  }
  const auto closed = std::make_exception_ptr(RuntimeFailure("the engine was closed"));
  for (Active& a : active) a.request->fail(closed);
}

}  // namespace pali
