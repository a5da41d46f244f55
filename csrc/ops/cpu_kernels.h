// Which implementation of the CPU kernels a call runs, chosen at run time.
//
// Every CPU op has a portable C++ path, compiled on every architecture, and an
// instruction-set path where this build has one: AVX2/FMA/F16C on x86-64 (the
// wheel's x86-64-v3 baseline), NEON on aarch64 (Armv8-A's baseline, present on
// every 64-bit Arm CPU). The instruction-set path is the default; the portable
// one runs when PALI_ENGINE_CPU_KERNELS=portable is set in the environment
// (read once, at the first op), or set_cpu_kernels() chooses it, so tests can
// hold every path shipped against the same references. The int8 kernels have
// their own, finer choice (ops/linear_int8.h), whose default follows this one.
#pragma once

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define PALI_CPU_AVX2 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define PALI_CPU_NEON 1
#endif

namespace pali {

enum class CpuKernels { simd, portable };

// The path every op takes: simd unless PALI_ENGINE_CPU_KERNELS=portable (or this
// build has no instruction-set path). Throws InvalidArgument, at the first call,
// for any other value than portable, simd or auto (an empty value is auto).
CpuKernels cpu_kernels();
// Chooses the path for the whole process (simd where this build has none: the
// portable path); for tests and benchmarks, between ops, never during one.
void set_cpu_kernels(CpuKernels kernels);
// "avx2", "neon" or "portable": what cpu_kernels() runs here.
const char* cpu_kernels_name();

// aarch64: the CPU has the Armv8.2 dot-product instructions (SDOT/UDOT;
// HWCAP_ASIMDDP from getauxval). Always false elsewhere.
bool cpu_has_dotprod();

}  // namespace pali
