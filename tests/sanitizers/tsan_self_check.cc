// Proves the ThreadSanitizer setup of `.ci/sanitized-tests thread` before it
// is trusted with the engine: loaded into python the same way as the engine's
// module (clang-instrumented, LLVM's libomp, GCC's libtsan preloaded, archer
// as the OpenMP tool), a race inside an OpenMP team and a race between two
// std::threads are reported, and data handed over at an OpenMP barrier is not.
// Without archer the barrier case reads as a race, which is why it is loaded.
#include <omp.h>

#include <thread>

namespace {
int thread_counter = 0;
}  // namespace

// Every thread of the team adds to one int without synchronization: a race.
extern "C" int race_in_an_openmp_team() {
  int shared = 0;
#pragma omp parallel num_threads(2)
  shared += omp_get_thread_num() + 1;
  return shared;
}

// Two threads increment one int: a race.
extern "C" int race_between_threads() {
  std::thread a([] { ++thread_counter; }), b([] { ++thread_counter; });
  a.join();
  b.join();
  return thread_counter;
}

// Each thread writes its slot, meets the other at the barrier, then reads the
// other's slot: ordered by the barrier, so no race.
extern "C" int handover_at_an_openmp_barrier() {
  int slots[2] = {0, 0};
  int sum = 0;
#pragma omp parallel num_threads(2) reduction(+ : sum)
  {
    slots[omp_get_thread_num()] = 1;
#pragma omp barrier
    sum += slots[1 - omp_get_thread_num()];
  }
  return sum;
}
