// The run-time choice of the CPU kernels' path (ops/cpu_kernels.h).
#include "ops/cpu_kernels.h"

#include <atomic>
#include <cstdlib>
#include <string>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // as the kernel's asm/hwcap.h defines it
#endif
#endif

#include "core/error.h"

namespace pali {
namespace {

CpuKernels with_simd_if_built(CpuKernels kernels) {
#if defined(PALI_CPU_AVX2) || defined(PALI_CPU_NEON)
  return kernels;
#else
  return CpuKernels::portable;
#endif
}

CpuKernels from_environment() {
  const char* value = std::getenv("PALI_ENGINE_CPU_KERNELS");
  const std::string name = value ? value : "";
  if (name == "portable") return CpuKernels::portable;
  PALI_CHECK_ARG(name.empty() || name == "auto" || name == "simd", "PALI_ENGINE_CPU_KERNELS is '", name,
                 "'; expected portable, simd or auto");
  return with_simd_if_built(CpuKernels::simd);
}

// -1 until the first call reads the environment.
std::atomic<int> chosen_kernels{-1};

}  // namespace

CpuKernels cpu_kernels() {
  int chosen = chosen_kernels.load(std::memory_order_relaxed);
  if (chosen < 0) {
    static const CpuKernels from_env = from_environment();
    int expected = -1;
    chosen_kernels.compare_exchange_strong(expected, static_cast<int>(from_env));
    chosen = chosen_kernels.load(std::memory_order_relaxed);
  }
  return static_cast<CpuKernels>(chosen);
}

void set_cpu_kernels(CpuKernels kernels) {
  chosen_kernels.store(static_cast<int>(with_simd_if_built(kernels)), std::memory_order_relaxed);
}

const char* cpu_kernels_name() {
  if (cpu_kernels() == CpuKernels::portable) return "portable";
#if defined(PALI_CPU_AVX2)
  return "avx2";
#else
  return "neon";
#endif
}

bool cpu_has_dotprod() {
#if defined(__aarch64__) && defined(__linux__)
  static const bool has = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return has;
#else
  return false;
#endif
}

}  // namespace pali
