// Proves the ThreadSanitizer setup of `.ci/sanitized-tests thread` before it
// is trusted with the engine: loaded into python the same way as the engine's
// module (clang-instrumented, GCC's libtsan preloaded), a race between two
// std::threads is reported, and data handed over through a mutex is not (the
// engine's thread pool hands work over through mutexes and atomics).
#include <mutex>
#include <thread>

namespace {
int thread_counter = 0;
int guarded_counter = 0;
std::mutex counter_mutex;
}  // namespace

// Two threads increment one int: a race.
extern "C" int race_between_threads() {
  std::thread a([] { ++thread_counter; }), b([] { ++thread_counter; });
  a.join();
  b.join();
  return thread_counter;
}

// Two threads increment one int under a mutex: no race.
extern "C" int handover_through_a_mutex() {
  const auto add = [] {
    std::lock_guard<std::mutex> lock(counter_mutex);
    ++guarded_counter;
  };
  std::thread a(add), b(add);
  a.join();
  b.join();
  return guarded_counter;
}
