// Linear layers: y[m, N] = x[m, K] · Wᵀ + b, with weights prepared once at load.
//
// A weight comes from the model file in PyTorch layout [N, K] (float32, float16
// or bfloat16; a view into the mapped file, any alignment). prepare_linear()
// converts it once into the chosen storage format and packs it into panels of
// 16 output channels, K-major inside a panel (zero-padded to a multiple of 16
// outputs; on huge pages: large buffers 2 MB-aligned and advised as such, small
// ones placed one after another in a PackedArena's blocks), which every CPU
// kernel streams:
//   * decode (m <= 8): one pass over the weights for all m rows, memory-bound;
//   * prefill (m > 8): a register-blocked GEMM (AVX2: 6x16 micro-kernel;
//     AVX-512: 12x32), K split in blocks, threads over N panels (and M when N
//     is small); weights other than f32 are widened to float32 one K block of
//     a panel at a time, except bf16 and i4 on CPUs with AVX-512 BF16, which
//     multiply bfloat16 pairs (x rounded to bfloat16 too) with float32 sums.
// Storage formats:
//   f32   the weight as is;
//   f16   IEEE half (round to nearest even), converted with F16C in the kernels;
//   bf16  bfloat16 (round to nearest even; a bfloat16 file's values as they are),
//         two consecutive k of one output side by side: [k2][16][2];
//   i8    weight-only int8, symmetric, one float scale per output channel:
//         scale[n] = max_k |W[n,k]| / 127, q = round_half_away(W / scale) in
//         [-127, 127] (scale 1 for an all-zero row); y = scale[n] * (x · q[n]) + b;
//   i4    weight-only int4, group-wise along K (groups of 32, 64 or 128 inputs:
//         i4_g32, i4_g64, i4_g128), one float16 scale per output and group:
//         with v the group's (first) value of largest magnitude, scale = v / -8
//         and q = clamp(round_half_away(W / scale), -8, 7) (rounded as
//         floor(|t| + 0.5) in float32; scale 1 for an all-zero
//         group), stored as q + 8 in 4 bits, k even in the low nibble and k odd
//         in the high one of one byte per output: [k2][16] bytes, K zero-padded
//         to whole groups; y = sum over groups of scale[g, n] * (x_g · q_g[n]) + b.
// Activations (x, y, bias) are float32, except with int8_activations (i8
// only, chosen at prepare time): then x is quantized too, per row, and the
// product is taken in integers (W8A8, ops/linear_int8.h), for every m; and in
// the decode of i4 weights (m <= kLinearDecodeMaxRows; their prefill too on
// the AVX-512 kernels without AMX), which quantizes x to int8 in blocks of 32
// (W4A8, ops/linear_int4_decode.h). Such a
// weight is packed for the integer kernels instead: [ceil(n/16)][k4][16][4],
// four consecutive k of one output in 4 bytes (k zero-padded to k4 * 4).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace pali {

enum class WeightFormat : uint8_t { f32, f16, bf16, i8, i4_g32, i4_g64, i4_g128 };

const char* weight_format_name(WeightFormat format);
// "f32"/"float32", "f16"/"float16", "bf16"/"bfloat16", "i8"/"int8", "i4"/"int4"
// (groups of 32), "i4_g64"/"int4_g64", "i4_g128"/"int4_g128"; throws InvalidArgument otherwise.
WeightFormat weight_format_from_name(const std::string& name);
// The group size of an i4 format, 0 for the others.
int64_t int4_group_size(WeightFormat format);
inline bool is_int4(WeightFormat format) { return int4_group_size(format) > 0; }
// Bits one weight takes in the packed panels (scales and padding aside).
int weight_format_bits(WeightFormat format);

// Output channels per packed panel.
constexpr int64_t kLinearPanel = 16;
// Up to this many rows take the decode path: one pass over the weights for all of them.
constexpr int64_t kLinearDecodeMaxRows = 8;

struct LinearWeight {
  int64_t n = 0;  // output features
  int64_t k = 0;  // input features
  WeightFormat format = WeightFormat::f32;
  bool has_bias = false;
  // Panels: [ceil(n/16)][packed_k()][16] elements of the format (float, uint16
  // half or bfloat16 bits, int8; for i4 [packed_k() / 2][16] bytes), the
  // layouts above.
  Tensor packed;
  // float32 [ceil(n/16)*16]: the bias (zeros past n), when has_bias.
  Tensor bias;
  // float32 [ceil(n/16)*16]: per-output scales, for i8; for i4 float16 bits
  // [ceil(n/16)][packed_k() / group][16].
  Tensor scales;
  // i8 only: x is quantized per row to int8 as well (W8A8).
  bool int8_activations = false;
  // int32 [ceil(n/16)*16], with int8_activations: 128 * sum_k q[n,k], what
  // storing x as unsigned (q + 128) adds to output n in the VNNI kernel.
  Tensor unsigned_offsets;

  int64_t num_panels() const { return (n + kLinearPanel - 1) / kLinearPanel; }
  // K as packed: k, rounded up to a multiple of 4 with int8_activations, of 2
  // for bf16, of the group for i4.
  int64_t packed_k() const {
    const int64_t step = int8_activations ? 4 : format == WeightFormat::bf16 ? 2 : is_int4(format) ? int4_group_size(format) : 1;
    return (k + step - 1) / step * step;
  }
  // Bytes of one packed panel.
  int64_t panel_bytes() const { return packed_k() * kLinearPanel * weight_format_bits(format) / 8; }
  // The packed bytes of panel p.
  const unsigned char* panel(int64_t p) const {
    return static_cast<const unsigned char*>(packed.raw()) + p * panel_bytes();
  }
  // The inputs one partial sum of the kernels covers: an i4 group, else all of K (as packed).
  int64_t sum_group() const { return is_int4(format) ? int4_group_size(format) : packed_k(); }
  // i4: the float16 scale bits of panel p, [groups][16]; null for the other formats.
  const uint16_t* group_scales(int64_t p) const {
    if (!is_int4(format)) return nullptr;
    return static_cast<const uint16_t*>(scales.raw()) + p * (packed_k() / sum_group()) * kLinearPanel;
  }
  // Bytes of packed weights (what a decode step streams), scales and bias excluded.
  size_t weight_bytes() const { return packed.nbytes(); }
};

// Memory for the packed weights of one model: they are placed one after
// another in 64 MB blocks, 2 MB-aligned and advised as huge pages. Why: decode
// streams every weight once per token, and on 4 KB pages the hardware
// prefetchers stop at every page boundary (a 768 x 768 float32 matrix streamed
// ~9% slower than on huge pages); giving each small matrix huge pages of its
// own would waste up to 2 MB per matrix. Untouched block tails cost address
// space only. Not thread-safe: one loader fills it.
class PackedArena {
 public:
  // A tensor of `shape` in the arena, 64-byte aligned; keeps its block alive.
  Tensor allocate(DType dtype, const Shape& shape);

 private:
  std::shared_ptr<const void> block_;
  unsigned char* base_ = nullptr;
  size_t used_ = 0;
  size_t size_ = 0;
};

// Told of source bytes (a run of whole rows of one weight) once they are
// packed: the packing goes in waves of about 64 MB of rows, so that a caller
// reading the weights from a mapped file can drop each wave's pages while the
// rest is packed, and a 1.2 GB embedding never stays resident beside its
// packed copy.
using ConsumedBytes = std::function<void(const void* bytes, size_t n)>;

// Prepares a weight [N, K] (float32, float16 or bfloat16, CPU) and an optional
// bias [N] (same dtypes) for linear(). Throws InvalidArgument on bad shapes/dtypes,
// and for int8_activations with a format other than i8.
// With an arena, small packed weights go into it (see PackedArena).
LinearWeight prepare_linear(const Tensor& weight, const Tensor* bias, WeightFormat format,
                            PackedArena* arena = nullptr, bool int8_activations = false,
                            const ConsumedBytes& consumed = {});

// Concatenates several weights [N_i, K] along N at prepare time (fused QKV, or
// wi_0 + wi_1 of a gated FFN): the result computes [y_0 | y_1 | ...] along N.
// `biases` is empty (no bias) or has one entry per weight, each possibly null
// (zeros for that part). For i8 the scales stay per output channel, so the
// result is the same as preparing the concatenated weight.
LinearWeight prepare_linear_concat(const std::vector<const Tensor*>& weights,
                                   const std::vector<const Tensor*>& biases,
                                   WeightFormat format, PackedArena* arena = nullptr,
                                   bool int8_activations = false, const ConsumedBytes& consumed = {});

// A weight quantized already by the engine's own rule, as `pali-engine convert
// --dtype int8|int4` writes it (docs/paligemma.md, "Quantized files"):
//   i8:    codes int8 [N, K] and scales float32 [N];
//   i4_g*: codes uint8 [N, K / 2], ONNX INT4 (two signed values a byte, the
//          even k in the low nibble), scales float16 [N, ceil(K / group)].
struct QuantizedRows {
  Tensor codes;
  Tensor scales;
};

// Packs quantized weights as they are (concatenated along N like
// prepare_linear_concat), without quantizing again: the result is the one
// prepare_linear_concat gives for the weights they were quantized from.
// `format` is the codes' (i8 or i4_g*); `k` the weights' K.
LinearWeight prepare_quantized_concat(const std::vector<QuantizedRows>& weights,
                                      const std::vector<const Tensor*>& biases, WeightFormat format, int64_t k,
                                      PackedArena* arena = nullptr, bool int8_activations = false,
                                      const ConsumedBytes& consumed = {});

// y[m, N] = x[m, K] · Wᵀ + b; with accumulate, y += x · Wᵀ + b (fuses a residual add).
// x and y are dense row-major (row strides K and N) and must not overlap.
// Threads: op_threads() of the calling thread (core/parallel.h).
void linear(const float* x, int64_t m, const LinearWeight& w, float* y, bool accumulate = false);

// Same with explicit row strides (in floats) for x and y, e.g. to write into a
// column slice of a wider buffer. Strides must be >= K and >= N respectively.
void linear_strided(const float* x, int64_t x_stride, int64_t m, const LinearWeight& w, float* y,
                    int64_t y_stride, bool accumulate = false);

// The float kernels (every format but W8A8) this CPU runs: on x86-64 "avx2"
// always, "avx512", "avx512_bf16" and "amx" where present; on aarch64 "neon";
// "portable" everywhere (last in the list). avx512_bf16 is avx512 but for the
// prefill (m > 8) of bf16 and i4 weights, which multiplies bfloat16 pairs (x
// rounded to bfloat16, i4's effective weights too; float32 sums); amx is
// avx512_bf16 with that prefill on AMX tiles; the others agree to float32
// rounding.
std::vector<std::string> linear_kernels_available();
// The kernel in use: the best available unless set_linear_kernel() chose one
// ("portable" when PALI_ENGINE_CPU_KERNELS=portable chose every op's portable path).
std::string linear_kernel();
// Chooses the kernel for the whole process ("auto": the best), for tests and
// benchmarks, between ops. Throws InvalidArgument for a name this CPU does not run.
void set_linear_kernel(const std::string& name);

// Row `row` (output channel) of the weight as the kernels see it, into out[K]:
// an embedding table read from the output layer it is tied to, in any format.
void linear_weight_row(const LinearWeight& w, int64_t row, float* out);

// The weight as the kernels see it, float32 [N, K] (f16 or bf16 values, or
// q * scale for i8 and i4): the exact reference for tests.
Tensor linear_effective_weight(const LinearWeight& w);

}  // namespace pali
