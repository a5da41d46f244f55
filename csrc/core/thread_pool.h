// The engine's thread pool: the workers behind parallel_for and parallel_rows
// (core/parallel.h), created once per process and shared by every thread that
// calls the engine.
//
// Why its own and not OpenMP's: OpenMP forks a team per op from each calling
// thread, splits the work statically and waits at barriers that spin, so one
// descheduled thread stalls a request and the spinning waiters keep it off the
// core. Here a call hands out numbered chunks through an atomic counter to the
// caller and whichever workers wake in time; waiting threads spin a few
// microseconds (with a pause instruction) and then sleep on a condition
// variable, so that idle workers leave the cores to whoever needs them.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace pali {

// Threads a call uses by default: OMP_NUM_THREADS when set (as before the
// pool), else the cores this process may run on.
int default_op_threads();

// A barrier of a fixed number of threads that spins briefly, then sleeps.
class SpinSleepBarrier {
 public:
  explicit SpinSleepBarrier(int parties) : parties_(parties) {}
  SpinSleepBarrier(const SpinSleepBarrier&) = delete;
  SpinSleepBarrier& operator=(const SpinSleepBarrier&) = delete;
  // Returns once all parties have called it this round; what each wrote before
  // is visible to all after.
  void wait();

 private:
  const int parties_;
  std::atomic<int> arrived_{0};
  std::atomic<uint32_t> round_{0};
  std::atomic<int> sleepers_{0};
  std::mutex mutex_;
  std::condition_variable woken_;
};

class ThreadPool {
 public:
  // The process's pool (a fresh one in a child after fork: the parent's
  // workers do not exist there).
  static ThreadPool& instance();
  // True on a thread while it runs a chunk or a team member of a pool call.
  static bool in_parallel_region();

  // Calls fn(c) once for each chunk c in [0, chunks), on the calling thread
  // and on up to threads - 1 workers. Thread t of the call first takes the
  // t-th share of the chunks (the same rows or weight panels as in the call
  // before, still in its core's caches), then takes what is left of the
  // others' shares, so a late or descheduled thread's chunks get done. Returns false,
  // having called nothing, when the pool is running another thread's call.
  template <typename F>
  bool run_chunks(int threads, int64_t chunks, F& fn) {
    return run(&call_chunk<F>, &fn, chunks, threads - 1, nullptr);
  }

  // Calls fn(t, barrier) for every member t in [0, threads) of a team, all at
  // once, each on its own thread (the caller is one of them), with a barrier
  // of the team. Returns false, having called nothing, when busy.
  template <typename F>
  bool run_team(int threads, F& fn) {
    SpinSleepBarrier barrier(threads);
    return run(&call_member<F>, &fn, threads, threads - 1, &barrier);
  }

 private:
  using Call = void (*)(void* fn, int64_t index, SpinSleepBarrier* barrier);

  template <typename F>
  static void call_chunk(void* fn, int64_t c, SpinSleepBarrier*) {
    (*static_cast<F*>(fn))(c);
  }
  template <typename F>
  static void call_member(void* fn, int64_t t, SpinSleepBarrier* barrier) {
    (*static_cast<F*>(fn))(static_cast<int>(t), *barrier);
  }

  ThreadPool() = default;
  bool run(Call call, void* fn, int64_t count, int wanted_workers, SpinSleepBarrier* barrier);
  void work_on_job(int self);
  bool try_join(uint64_t generation, int index);
  void ensure_workers(int count);
  void worker_loop(int index);

  // Each thread's share of the current call's chunks, claimed through its counter.
  struct alignas(64) Share {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  static constexpr int kMaxThreads = 256;

  std::mutex busy_;  // held by the thread whose call the pool runs
  std::mutex workers_mutex_;
  int workers_ = 0;

  // The current call. Workers join it without a lock: state_ packs its
  // generation (bumped per call), the workers it wants, those that joined
  // and whether it is closed; only a worker that joined reads the fields
  // below, which the next call rewrites only after every joined worker is done.
  std::atomic<uint64_t> state_{0};
  Call call_ = nullptr;
  void* fn_ = nullptr;
  int threads_ = 0;
  SpinSleepBarrier* barrier_ = nullptr;
  Share shares_[kMaxThreads];
  std::atomic<int> workers_done_{0};

  std::mutex idle_mutex_;
  std::condition_variable work_posted_;
  std::atomic<int> idle_sleepers_{0};

  std::mutex caller_mutex_;
  std::condition_variable caller_woken_;
  std::atomic<int> caller_sleepers_{0};
};

}  // namespace pali
