// The engine's thread pool: the workers behind parallel_for (core/parallel.h),
// created once per process and shared by every thread that calls the engine.
//
// Why its own and not OpenMP's: OpenMP forks a team per op from each calling
// thread, splits the work statically and waits at barriers that spin, so one
// descheduled thread stalls a request and the spinning waiters keep it off the
// core. Here a call hands out numbered chunks to the caller and whichever
// workers are awake, each thread first taking its own share and then what is
// left of the others', so the chunks of a late or descheduled thread get done
// by the others and nobody waits for a thread that holds no chunk. Waiting
// threads spin for a bounded time (long enough to bridge the gap between two
// ops of one request, so that a worker is awake for the next) and then sleep
// on a futex, so that idle workers give their cores back.
#pragma once

#include <atomic>
#include <cstdint>

#if !defined(__linux__)
#include <condition_variable>
#include <mutex>
#endif

namespace pali {

// Threads a call uses by default: OMP_NUM_THREADS when set (as before the
// pool), else the cores this process may run on.
int default_op_threads();

// A 32-bit word that threads wait on until it changes: a futex on Linux, a
// condition variable elsewhere. A waker changes the word, then calls wake();
// wake() costs a system call only when a thread sleeps on the word.
class WaitWord {
 public:
  std::atomic<uint32_t> value{0};

  // Returns once done() is true, spinning up to spin_ns and then sleeping;
  // done() must depend only on this word's value and what its wakers wrote first.
  template <typename Done>
  void wait_until(Done done, int64_t spin_ns) {
    if (!spin_until(done, spin_ns)) sleep_until(done);
  }
  // Spins until done() or spin_ns have passed; returns done().
  template <typename Done>
  static bool spin_until(Done done, int64_t spin_ns);
  // Sleeps until done().
  template <typename Done>
  void sleep_until(Done done) {
    for (;;) {
      sleepers_.fetch_add(1);
      const uint32_t seen = value.load();
      if (done()) break;
      sleep_while(seen);
      sleepers_.fetch_sub(1);
      if (done()) return;
    }
    sleepers_.fetch_sub(1);
  }
  void wake() {
    if (sleepers_.load() > 0) wake_all();
  }
  static int64_t now_ns();  // the steady clock

 private:
  static void cpu_relax();
  void sleep_while(uint32_t seen);
  void wake_all();

  std::atomic<int> sleepers_{0};
#if !defined(__linux__)
  std::mutex mutex_;
  std::condition_variable changed_;
#endif
};

class ThreadPool {
 public:
  // The process's pool (a fresh one in a child after fork: the parent's
  // workers do not exist there).
  static ThreadPool& instance();
  // True on a thread while it runs a chunk of a pool call (and on the pool's workers).
  static bool in_parallel_region();

  // Calls fn(c) once for each chunk c in [0, chunks), on the calling thread
  // and on up to threads - 1 workers. Thread t of the call first takes the
  // t-th share of the chunks (the same rows or weight panels as in the call
  // before, still in its core's caches), then takes what is left of the
  // others' shares. Returns false, having called nothing, when the pool is
  // running another thread's call, or for a while after a call waited long
  // for a worker that the OS had descheduled (see alone_until_ns_).
  template <typename F>
  bool run_chunks(int threads, int64_t chunks, F& fn) {
    return run(&call_chunk<F>, &fn, chunks, threads - 1);
  }

 private:
  using Call = void (*)(void* fn, int64_t chunk);

  template <typename F>
  static void call_chunk(void* fn, int64_t c) {
    (*static_cast<F*>(fn))(c);
  }

  ThreadPool() = default;
  bool run(Call call, void* fn, int64_t chunks, int wanted_workers);
  int64_t work_on_call(int self);
  void wait_for_workers(uint32_t joined, int64_t caller_chunk_ns);
  bool try_join(uint32_t generation, int index);
  void ensure_workers(int count);
  void worker_loop(int index);

  // Each thread's share of the current call's chunks, claimed through its counter.
  struct alignas(64) Share {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  static constexpr int kMaxThreads = 256;

  std::atomic<bool> busy_{false};  // set by the thread whose call the pool runs
  // Until then (steady clock ns; 0: no such time) calls run on their callers
  // alone. Why: while another process keeps a core busy, the OS deschedules
  // one of the call's threads every few milliseconds for a time slice, and a
  // call whose chunk that thread holds waits for it; a caller alone on its
  // core is then faster than two threads that keep waiting for each other.
  std::atomic<int64_t> alone_until_ns_{0};
  int workers_started_ = 0;        // changed only by that thread

  // The current call. Workers join it without a lock: state_ packs its
  // generation (bumped per call), the workers it wants, those that joined
  // and whether it is closed; only a worker that joined reads the fields
  // below, which the next call rewrites only after every joined worker is done.
  alignas(64) std::atomic<uint64_t> state_{0};
  Call call_ = nullptr;
  void* fn_ = nullptr;
  int threads_ = 0;
  Share shares_[kMaxThreads];
  // Idle workers wait on `posted_` (the generation of the latest call), the
  // caller on `workers_done_` (the joined workers that have left the call).
  alignas(64) WaitWord posted_;
  alignas(64) WaitWord workers_done_;
};

}  // namespace pali
