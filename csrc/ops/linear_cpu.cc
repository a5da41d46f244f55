// CPU linear layers: weight packing, the decode (GEMV-style) path and the
// prefill (GEMM) path. See ops/linear.h for the layout and formats. The AVX2
// kernels run on x86-64; the NEON and portable ones (one template,
// ops/simd_lanes.h) on aarch64, elsewhere, or when the portable path is chosen.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "core/aligned_buffer.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "ops/linear.h"
#include "ops/linear_int4_decode.h"
#include "ops/linear_int8.h"
#include "ops/linear_kernels.h"
#include "ops/row_dispatch.h"
#include "ops/simd_lanes.h"

namespace pali {

const char* weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::f32: return "f32";
    case WeightFormat::f16: return "f16";
    case WeightFormat::bf16: return "bf16";
    case WeightFormat::i8: return "i8";
    case WeightFormat::i4_g32: return "i4";
    case WeightFormat::i4_g64: return "i4_g64";
    case WeightFormat::i4_g128: return "i4_g128";
  }
  return "?";
}

WeightFormat weight_format_from_name(const std::string& name) {
  if (name == "f32" || name == "float32") return WeightFormat::f32;
  if (name == "f16" || name == "float16") return WeightFormat::f16;
  if (name == "bf16" || name == "bfloat16") return WeightFormat::bf16;
  if (name == "i8" || name == "int8") return WeightFormat::i8;
  if (name == "i4" || name == "int4" || name == "i4_g32" || name == "int4_g32") return WeightFormat::i4_g32;
  if (name == "i4_g64" || name == "int4_g64") return WeightFormat::i4_g64;
  if (name == "i4_g128" || name == "int4_g128") return WeightFormat::i4_g128;
  throw InvalidArgument(str_cat("unknown weight format '", name,
                                "' (expected f32/float32, f16/float16, bf16/bfloat16, i8/int8, i4/int4, "
                                "int4_g64 or int4_g128)"));
}

int64_t int4_group_size(WeightFormat format) {
  switch (format) {
    case WeightFormat::i4_g32: return 32;
    case WeightFormat::i4_g64: return 64;
    case WeightFormat::i4_g128: return 128;
    default: return 0;
  }
}

int weight_format_bits(WeightFormat format) {
  switch (format) {
    case WeightFormat::f32: return 32;
    case WeightFormat::f16:
    case WeightFormat::bf16: return 16;
    case WeightFormat::i8: return 8;
    default: return 4;
  }
}

namespace {

constexpr int64_t P = kLinearPanel;  // 16 outputs per panel

// Forced inlining keeps the accumulator arrays of the kernels in registers
// (out of line, their address escapes and GCC spills them every iteration).
#define PALI_ALWAYS_INLINE inline __attribute__((always_inline))

// Reads element i of a float32/float16/bfloat16 buffer of any alignment.
inline float load_any(const unsigned char* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f32: {
      float v;
      std::memcpy(&v, base + i * 4, 4);
      return v;
    }
    case DType::f16: {
      uint16_t b;
      std::memcpy(&b, base + i * 2, 2);
      return half_to_float(b);
    }
    default: {
      uint16_t b;
      std::memcpy(&b, base + i * 2, 2);
      return bfloat16_to_float(b);
    }
  }
}

void check_float_tensor(const Tensor& t, const char* what) {
  PALI_CHECK_ARG(t.device() == Device::cpu, what, " must be a CPU tensor, got ", device_name(t.device()));
  PALI_CHECK_ARG(t.dtype() == DType::f32 || t.dtype() == DType::f16 || t.dtype() == DType::bf16,
                 what, " must be float32, float16 or bfloat16, got ", t.describe());
}

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kArenaBlock = size_t{64} << 20;
constexpr size_t kArenaLargest = size_t{16} << 20;  // larger weights get blocks of their own

// `nbytes` rounded up to whole huge pages, 2 MB aligned and advised as huge
// pages (with THP in "madvise" mode nothing else gets them); null on failure.
std::shared_ptr<const void> allocate_huge(size_t nbytes) {
  const size_t rounded = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (!p) return nullptr;
#ifdef MADV_HUGEPAGE
  madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
}

// Packed weights: in the arena when there is one and they are small; large
// buffers on huge pages of their own (numpy does the same for its large arrays).
Tensor allocate_packed(DType dtype, const Shape& shape, PackedArena* arena) {
  const size_t nbytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  if (arena && nbytes <= kArenaLargest) return arena->allocate(dtype, shape);
  if (nbytes >= 2 * kHugePage)
    if (auto block = allocate_huge(nbytes)) return Tensor::view(block.get(), dtype, shape, block);
  return Tensor::empty(dtype, shape);
}

// Where output j, input kk of a panel sits in it, in elements of the packed
// tensor: [k][16]; bf16: [k2][16][2]; i4: byte [k2][16] (kk % 2 picks the nibble).
inline int64_t panel_offset(WeightFormat format, int64_t j, int64_t kk) {
  if (format == WeightFormat::bf16) return (kk / 2) * 2 * P + j * 2 + kk % 2;
  if (is_int4(format)) return (kk / 2) * P + j;
  return kk * P + j;
}

// The same for the integer kernels of int8 activations: [k4][16][4].
inline int64_t int8_activations_offset(int64_t j, int64_t kk) { return (kk / 4) * 4 * P + j * 4 + kk % 4; }

// Output row `row` of the concatenated weight: which source and which of its rows.
struct RowSource {
  const unsigned char* data;  // null: a padding row of zeros
  DType dtype;
};

constexpr size_t kWaveBytes = size_t{64} << 20;

// Tells `consumed` of the source bytes of rows [begin, end), one call per run
// of rows that lie one after another in memory.
void report_consumed(const std::vector<RowSource>& rows, int64_t begin, int64_t end, int64_t k,
                     const ConsumedBytes& consumed) {
  const unsigned char* run = nullptr;
  size_t run_bytes = 0;
  for (int64_t r = begin; r < end; ++r) {
    const RowSource& src = rows[r];
    if (!src.data) continue;
    const size_t n = static_cast<size_t>(k) * dtype_size(src.dtype);
    if (run && src.data == run + run_bytes) {
      run_bytes += n;
      continue;
    }
    if (run) consumed(run, run_bytes);
    run = src.data;
    run_bytes = n;
  }
  if (run) consumed(run, run_bytes);
}

// Packs panels [0, panels) in waves of about kWaveBytes of source rows
// (`row_bytes` each), calling `done(first_row, end_row)` after each wave.
void pack_in_waves(int64_t panels, size_t row_bytes, const std::function<void(int64_t, int64_t)>& pack,
                   const std::function<void(int64_t, int64_t)>& done) {
  const int64_t wave_panels = std::max<int64_t>(1, static_cast<int64_t>(kWaveBytes / (row_bytes * P)));
  for (int64_t wb = 0; wb < panels; wb += wave_panels) {
    const int64_t we = std::min(panels, wb + wave_panels);
    parallel_for(wb, we, 1, pack);
    done(wb * P, we * P);
  }
}

// The i8 format's tensors of `out` (packed [panels][k_pad][16], a scale per
// output, the unsigned offsets of int8 activations), allocated.
void allocate_int8(LinearWeight& out, int64_t panels, int64_t k_pad, PackedArena* arena) {
  out.packed = allocate_packed(DType::i8, {panels, k_pad, P}, arena);
  out.scales = Tensor::empty(DType::f32, {panels * P});
  if (out.int8_activations) out.unsigned_offsets = Tensor::empty(DType::i32, {panels * P});
}

// Per-thread scratch `slot` of at least n elements, kept between calls: the
// packing runs one panel per chunk, and a fresh buffer per panel (mmap'd and
// zeroed by the kernel above 128 KB) cost more than the packing itself.
template <typename T>
T* scratch(int slot, int64_t n) {
  thread_local AlignedBuffer<unsigned char> buffers[2];
  return reinterpret_cast<T*>(buffers[slot].get(std::max<int64_t>(n, 1) * static_cast<int64_t>(sizeof(T))));
}

// Element kk of a row, as float32.
inline float element(const RowSource& src, int64_t kk) { return src.data ? load_any(src.data, src.dtype, kk) : 0.0f; }

// A whole row as float32 into out[k].
void widen_row(const RowSource& src, int64_t k, float* out) {
  if (!src.data) {
    std::fill(out, out + k, 0.0f);
  } else if (src.dtype == DType::f32) {
    std::memcpy(out, src.data, k * sizeof(float));
  } else if (src.dtype == DType::bf16) {
    for (int64_t kk = 0; kk < k; ++kk) {
      uint16_t b;
      std::memcpy(&b, src.data + kk * 2, 2);
      const uint32_t bits = static_cast<uint32_t>(b) << 16;
      std::memcpy(out + kk, &bits, 4);
    }
  } else {
    for (int64_t kk = 0; kk < k; ++kk) out[kk] = load_any(src.data, src.dtype, kk);
  }
}

}  // namespace

Tensor PackedArena::allocate(DType dtype, const Shape& shape) {
  const size_t nbytes = (static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype) + 63) / 64 * 64;
  if (!block_ || used_ + nbytes > size_) {
    const size_t size = std::max(kArenaBlock, nbytes);
    block_ = allocate_huge(size);
    if (!block_) return Tensor::empty(dtype, shape);
    base_ = static_cast<unsigned char*>(const_cast<void*>(block_.get()));
    used_ = 0;
    size_ = size;
  }
  void* p = base_ + used_;
  used_ += nbytes;
  return Tensor::view(p, dtype, shape, block_);
}

LinearWeight prepare_linear_concat(const std::vector<const Tensor*>& weights,
                                   const std::vector<const Tensor*>& biases, WeightFormat format,
                                   PackedArena* arena, bool int8_activations, const ConsumedBytes& consumed) {
  PALI_CHECK_ARG(!weights.empty(), "prepare_linear: no weights");
  PALI_CHECK_ARG(!int8_activations || format == WeightFormat::i8,
                 "prepare_linear: int8 activations need the i8 weight format, got ", weight_format_name(format));
  PALI_CHECK_ARG(biases.empty() || biases.size() == weights.size(),
                 "prepare_linear: ", biases.size(), " biases for ", weights.size(), " weights");
  int64_t n_total = 0;
  const int64_t k = weights[0] ? (weights[0]->rank() == 2 ? weights[0]->dim(1) : -1) : -1;
  bool any_bias = false;
  for (size_t i = 0; i < weights.size(); ++i) {
    PALI_CHECK_ARG(weights[i] != nullptr, "prepare_linear: weight ", i, " is null");
    const Tensor& w = *weights[i];
    check_float_tensor(w, "linear weight");
    PALI_CHECK_ARG(w.rank() == 2, "linear weight must be [N, K], got ", w.describe());
    PALI_CHECK_ARG(w.dim(1) == k, "prepare_linear_concat: weights differ in K: ", w.describe(),
                   " vs K = ", k);
    n_total += w.dim(0);
    if (!biases.empty() && biases[i]) {
      const Tensor& b = *biases[i];
      check_float_tensor(b, "linear bias");
      PALI_CHECK_ARG(b.rank() == 1 && b.dim(0) == w.dim(0), "linear bias must be [", w.dim(0),
                     "], got ", b.describe());
      any_bias = true;
    }
  }
  PALI_CHECK_ARG(n_total > 0 && k > 0, "linear weight must have N > 0 and K > 0");

  LinearWeight out;
  out.n = n_total;
  out.k = k;
  out.format = format;
  out.has_bias = any_bias;
  out.int8_activations = int8_activations;
  const int64_t panels = out.num_panels();
  const int64_t n_pad = panels * P;

  // Row table: source pointer per output row (null for padding rows).
  std::vector<RowSource> rows(n_pad, RowSource{nullptr, DType::f32});
  std::vector<float> bias(n_pad, 0.0f);
  {
    int64_t r = 0;
    for (size_t i = 0; i < weights.size(); ++i) {
      const Tensor& w = *weights[i];
      const auto* base = static_cast<const unsigned char*>(w.raw());
      const size_t es = dtype_size(w.dtype());
      const Tensor* b = biases.empty() ? nullptr : biases[i];
      const auto* bbase = b ? static_cast<const unsigned char*>(b->raw()) : nullptr;
      for (int64_t j = 0; j < w.dim(0); ++j, ++r) {
        rows[r] = RowSource{base + static_cast<size_t>(j) * k * es, w.dtype()};
        if (b) bias[r] = load_any(bbase, b->dtype(), j);
      }
    }
  }

  if (any_bias) {
    out.bias = Tensor::empty(DType::f32, {n_pad});
    std::memcpy(out.bias.data<float>(), bias.data(), n_pad * sizeof(float));
  }

  // Panels in waves of about kWaveBytes of source rows, each wave's rows told
  // to `consumed` once it is packed.
  size_t row_bytes = 0;
  for (const Tensor* w : weights) row_bytes = std::max(row_bytes, static_cast<size_t>(k) * dtype_size(w->dtype()));
  auto in_waves = [&](const std::function<void(int64_t, int64_t)>& pack) {
    pack_in_waves(panels, row_bytes, pack, [&](int64_t begin, int64_t end) {
      if (consumed) report_consumed(rows, begin, std::min(end, n_total), k, consumed);
    });
  };

  // Each panel's 16 source rows are read once, row by row (sequentially, as
  // the file stores them), into a tile, which is then written out in the
  // panel's layout: reading the rows element by element at the panel's
  // stride cost ~12 ns per weight.
  switch (format) {
    case WeightFormat::f32:
    case WeightFormat::f16: {
      const bool half = format == WeightFormat::f16;
      out.packed = allocate_packed(half ? DType::f16 : DType::f32, {panels, k, P}, arena);
      in_waves([&](int64_t pb, int64_t pe) {
        float* tile = scratch<float>(0, P * k);
        uint16_t* bits = scratch<uint16_t>(1, half ? P * k : 0);
        for (int64_t p = pb; p < pe; ++p) {
          for (int64_t j = 0; j < P; ++j) {
            const RowSource& src = rows[p * P + j];
            if (half && src.data && src.dtype == DType::f16)
              std::memcpy(bits + j * k, src.data, k * 2);  // a float16 source bit for bit
            else if (half)
              for (int64_t kk = 0; kk < k; ++kk) bits[j * k + kk] = float_to_half(element(src, kk));
            else
              widen_row(src, k, tile + j * k);
          }
          if (half) {
            auto* d = reinterpret_cast<uint16_t*>(out.packed.data<Half>()) + p * k * P;
            for (int64_t kk = 0; kk < k; ++kk)
              for (int64_t j = 0; j < P; ++j) d[kk * P + j] = bits[j * k + kk];
          } else {
            float* d = out.packed.data<float>() + p * k * P;
            for (int64_t kk = 0; kk < k; ++kk)
              for (int64_t j = 0; j < P; ++j) d[kk * P + j] = tile[j * k + kk];
          }
        }
      });
      break;
    }
    case WeightFormat::bf16: {
      const int64_t k_pad = out.packed_k();
      out.packed = allocate_packed(DType::bf16, {panels, k_pad, P}, arena);
      in_waves([&](int64_t pb, int64_t pe) {
        uint16_t* bits = scratch<uint16_t>(0, P * k_pad);
        for (int64_t p = pb; p < pe; ++p) {
          for (int64_t j = 0; j < P; ++j) {
            const RowSource& src = rows[p * P + j];
            uint16_t* row = bits + j * k_pad;
            std::fill(row + k, row + k_pad, uint16_t{0});
            if (src.data && src.dtype == DType::bf16)
              std::memcpy(row, src.data, k * 2);  // a bfloat16 source bit for bit
            else
              for (int64_t kk = 0; kk < k; ++kk) row[kk] = float_to_bfloat16(element(src, kk));
          }
          auto* d = reinterpret_cast<uint16_t*>(out.packed.data<BFloat16>()) + p * k_pad * P;
          for (int64_t kp = 0; kp < k_pad / 2; ++kp)
            for (int64_t j = 0; j < P; ++j) {
              d[(kp * P + j) * 2] = bits[j * k_pad + 2 * kp];
              d[(kp * P + j) * 2 + 1] = bits[j * k_pad + 2 * kp + 1];
            }
        }
      });
      break;
    }
    case WeightFormat::i4_g32:
    case WeightFormat::i4_g64:
    case WeightFormat::i4_g128: {
      const int64_t group = int4_group_size(format);
      const int64_t k_pad = out.packed_k();
      const int64_t groups = k_pad / group;
      out.packed = allocate_packed(DType::u8, {panels, k_pad / 2, P}, arena);
      out.scales = Tensor::empty(DType::f16, {panels, groups, P});
      uint8_t* dst = out.packed.data<uint8_t>();
      auto* scales = reinterpret_cast<uint16_t*>(out.scales.data<Half>());
      in_waves([&](int64_t pb, int64_t pe) {
        float* row = scratch<float>(0, k_pad);
        std::fill(row + k, row + k_pad, 0.0f);
        uint8_t* codes = scratch<uint8_t>(1, P * k_pad);  // q + 8 per output and input
        for (int64_t p = pb; p < pe; ++p) {
          for (int64_t j = 0; j < P; ++j) {
            widen_row(rows[p * P + j], k, row);
            for (int64_t g = 0; g < groups; ++g) {
              const float* v = row + g * group;
              // The first value of largest magnitude: the largest magnitude
              // first (a loop the compiler vectorizes), then where it is.
              float largest = 0.0f;
              for (int64_t i = 0; i < group; ++i) largest = std::max(largest, std::fabs(v[i]));
              float extreme = 0.0f;
              for (int64_t i = 0; i < group; ++i)
                if (std::fabs(v[i]) == largest) {
                  extreme = v[i];
                  break;
                }
              // The scale as stored (float16) is the one the values are divided by.
              uint16_t bits = float_to_half(std::max(-65504.0f, std::min(65504.0f, extreme / -8.0f)));
              float scale = half_to_float(bits);
              if (scale == 0.0f || !std::isfinite(scale)) {
                bits = float_to_half(1.0f);
                scale = 1.0f;
              }
              scales[(p * groups + g) * P + j] = bits;
              uint8_t* c = codes + j * k_pad + g * group;
              // Half away from zero, as floor(|t| + 0.5) in float32 (vectorized; std::round is not).
              for (int64_t i = 0; i < group; ++i) {
                const float t = v[i] / scale;
                const float q = std::copysign(std::floor(std::fabs(t) + 0.5f), t);
                c[i] = static_cast<uint8_t>(static_cast<int>(std::min(7.0f, std::max(-8.0f, q))) + 8);
              }
            }
          }
          uint8_t* d = dst + p * (k_pad / 2) * P;
          for (int64_t kp = 0; kp < k_pad / 2; ++kp)
            for (int64_t j = 0; j < P; ++j)
              d[kp * P + j] = static_cast<uint8_t>(codes[j * k_pad + 2 * kp] | (codes[j * k_pad + 2 * kp + 1] << 4));
        }
      });
      break;
    }
    case WeightFormat::i8: {
      const int64_t k_pad = out.packed_k();  // zero padding past k
      allocate_int8(out, panels, k_pad, arena);
      int8_t* dst = out.packed.data<int8_t>();
      float* scales = out.scales.data<float>();
      int32_t* offsets = int8_activations ? out.unsigned_offsets.data<int32_t>() : nullptr;
      in_waves([&](int64_t pb, int64_t pe) {
        float* row = scratch<float>(0, k);
        int8_t* codes = scratch<int8_t>(1, P * k_pad);
        for (int64_t p = pb; p < pe; ++p) {
          for (int64_t j = 0; j < P; ++j) {
            widen_row(rows[p * P + j], k, row);
            float amax = 0.0f;
            for (int64_t kk = 0; kk < k; ++kk) amax = std::max(amax, std::fabs(row[kk]));
            const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
            scales[p * P + j] = scale;
            int32_t sum = 0;
            int8_t* c = codes + j * k_pad;
            std::fill(c + k, c + k_pad, int8_t{0});
            for (int64_t kk = 0; kk < k; ++kk) {
              c[kk] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, std::round(row[kk] / scale))));
              sum += c[kk];
            }
            if (offsets) offsets[p * P + j] = 128 * sum;
          }
          int8_t* d = dst + p * k_pad * P;
          for (int64_t kk = 0; kk < k_pad; ++kk)
            for (int64_t j = 0; j < P; ++j)
              d[int8_activations ? int8_activations_offset(j, kk) : kk * P + j] = codes[j * k_pad + kk];
        }
      });
      break;
    }
  }
  return out;
}

LinearWeight prepare_quantized_concat(const std::vector<QuantizedRows>& weights,
                                      const std::vector<const Tensor*>& biases, WeightFormat format, int64_t k,
                                      PackedArena* arena, bool int8_activations, const ConsumedBytes& consumed) {
  const bool int4 = is_int4(format);
  PALI_CHECK_ARG(format == WeightFormat::i8 || int4, "prepare_quantized: format must be i8 or i4, got ",
                 weight_format_name(format));
  PALI_CHECK_ARG(!int8_activations || format == WeightFormat::i8, "prepare_quantized: int8 activations need i8");
  PALI_CHECK_ARG(!weights.empty() && k > 0 && (!int4 || k % 2 == 0), "prepare_quantized: no weights, or K = ", k);
  PALI_CHECK_ARG(biases.empty() || biases.size() == weights.size(), "prepare_quantized: ", biases.size(),
                 " biases for ", weights.size(), " weights");
  const int64_t group = int4 ? int4_group_size(format) : 0;
  const int64_t file_groups = int4 ? (k + group - 1) / group : 1;
  LinearWeight out;
  out.k = k;
  out.format = format;
  out.int8_activations = int8_activations;
  // Per output row: its codes and scales (null: a padding row), its bias.
  struct Row {
    const unsigned char* codes = nullptr;
    const void* scales = nullptr;
  };
  std::vector<Row> rows;
  std::vector<float> bias;
  for (size_t i = 0; i < weights.size(); ++i) {
    const Tensor& codes = weights[i].codes;
    const Tensor& scales = weights[i].scales;
    const int64_t n = codes.rank() == 2 ? codes.dim(0) : -1;
    PALI_CHECK_ARG(n > 0 && codes.dim(1) == (int4 ? k / 2 : k) && codes.dtype() == (int4 ? DType::u8 : DType::i8),
                   "prepare_quantized: codes ", codes.describe(), " for K = ", k);
    PALI_CHECK_ARG(int4 ? scales.dtype() == DType::f16 && scales.rank() == 2 && scales.dim(0) == n &&
                              scales.dim(1) == file_groups
                        : scales.dtype() == DType::f32 && scales.rank() == 1 && scales.dim(0) == n,
                   "prepare_quantized: scales ", scales.describe(), " for codes ", codes.describe());
    const Tensor* b = biases.empty() ? nullptr : biases[i];
    if (b) {
      check_float_tensor(*b, "linear bias");
      PALI_CHECK_ARG(b->rank() == 1 && b->dim(0) == n, "linear bias must be [", n, "], got ", b->describe());
      out.has_bias = true;
    }
    const auto* c = static_cast<const unsigned char*>(codes.raw());
    const auto* sc = static_cast<const unsigned char*>(scales.raw());
    const size_t code_row = static_cast<size_t>(codes.dim(1)), scale_row = static_cast<size_t>(int4 ? file_groups * 2 : 4);
    for (int64_t j = 0; j < n; ++j) {
      rows.push_back({c + j * code_row, sc + j * scale_row});
      bias.push_back(b ? load_any(static_cast<const unsigned char*>(b->raw()), b->dtype(), j) : 0.0f);
    }
  }
  out.n = static_cast<int64_t>(rows.size());
  const int64_t panels = out.num_panels(), n_pad = panels * P, k_pad = out.packed_k();
  rows.resize(n_pad);
  bias.resize(n_pad, 0.0f);
  if (out.has_bias) {
    out.bias = Tensor::empty(DType::f32, {n_pad});
    std::memcpy(out.bias.data<float>(), bias.data(), n_pad * sizeof(float));
  }
  const size_t code_bytes = static_cast<size_t>(int4 ? k / 2 : k);
  auto in_waves = [&](const std::function<void(int64_t, int64_t)>& pack) {
    pack_in_waves(panels, code_bytes, pack, [&](int64_t begin, int64_t end) {
      if (consumed)
        for (int64_t r = begin; r < std::min(end, out.n); ++r) consumed(rows[r].codes, code_bytes);
    });
  };
  if (int4) {
    const int64_t groups = k_pad / group;  // == file_groups
    out.packed = allocate_packed(DType::u8, {panels, k_pad / 2, P}, arena);
    out.scales = Tensor::empty(DType::f16, {panels, groups, P});
    uint8_t* dst = out.packed.data<uint8_t>();
    auto* scales = reinterpret_cast<uint16_t*>(out.scales.data<Half>());
    in_waves([&](int64_t pb, int64_t pe) {
      for (int64_t p = pb; p < pe; ++p) {
        for (int64_t j = 0; j < P; ++j) {
          const Row& row = rows[p * P + j];
          for (int64_t g = 0; g < groups; ++g) {
            uint16_t bits = 0x3C00;  // 1.0: a padding row's, as prepare_linear gives an all-zero group
            if (row.scales) std::memcpy(&bits, static_cast<const unsigned char*>(row.scales) + g * 2, 2);
            scales[(p * groups + g) * P + j] = bits;
          }
        }
        // The engine's nibble is q + 8, ONNX's q in two's complement: one XOR with 8 apart.
        uint8_t* d = dst + p * (k_pad / 2) * P;
        for (int64_t kp = 0; kp < k_pad / 2; ++kp)
          for (int64_t j = 0; j < P; ++j) {
            const Row& row = rows[p * P + j];
            d[kp * P + j] = row.codes && 2 * kp < k ? static_cast<uint8_t>(row.codes[kp] ^ 0x88) : 0x88;
          }
      }
    });
  } else {
    allocate_int8(out, panels, k_pad, arena);
    int8_t* dst = out.packed.data<int8_t>();
    float* scales = out.scales.data<float>();
    int32_t* offsets = int8_activations ? out.unsigned_offsets.data<int32_t>() : nullptr;
    in_waves([&](int64_t pb, int64_t pe) {
      for (int64_t p = pb; p < pe; ++p) {
        int8_t* d = dst + p * k_pad * P;
        for (int64_t j = 0; j < P; ++j) {
          const Row& row = rows[p * P + j];
          float scale = 1.0f;
          if (row.scales) std::memcpy(&scale, row.scales, 4);
          scales[p * P + j] = scale;
          const auto* codes = reinterpret_cast<const int8_t*>(row.codes);
          int32_t sum = 0;
          for (int64_t kk = 0; kk < k_pad; ++kk) {
            const int8_t c = codes && kk < k ? codes[kk] : int8_t{0};
            sum += c;
            d[int8_activations ? int8_activations_offset(j, kk) : kk * P + j] = c;
          }
          if (offsets) offsets[p * P + j] = 128 * sum;
        }
      }
    });
  }
  return out;
}

LinearWeight prepare_linear(const Tensor& weight, const Tensor* bias, WeightFormat format,
                            PackedArena* arena, bool int8_activations, const ConsumedBytes& consumed) {
  std::vector<const Tensor*> biases;
  if (bias) biases.push_back(bias);
  return prepare_linear_concat({&weight}, biases, format, arena, int8_activations, consumed);
}

void linear_weight_row(const LinearWeight& w, int64_t row, float* out) {
  PALI_CHECK_ARG(row >= 0 && row < w.n, "linear_weight_row: row ", row, " outside [0, ", w.n, ")");
  const int64_t p = row / P, j = row % P, k_pad = w.packed_k();
  const auto at = [&](int64_t kk) {
    return p * k_pad * P + (w.int8_activations ? int8_activations_offset(j, kk) : panel_offset(w.format, j, kk));
  };
  switch (w.format) {
    case WeightFormat::f32:
      for (int64_t kk = 0; kk < w.k; ++kk) out[kk] = w.packed.data<float>()[at(kk)];
      break;
    case WeightFormat::f16:
      for (int64_t kk = 0; kk < w.k; ++kk) out[kk] = half_to_float(w.packed.data<Half>()[at(kk)].bits);
      break;
    case WeightFormat::bf16:
      for (int64_t kk = 0; kk < w.k; ++kk) out[kk] = bfloat16_to_float(w.packed.data<BFloat16>()[at(kk)].bits);
      break;
    case WeightFormat::i8: {
      const float scale = w.scales.data<float>()[row];
      for (int64_t kk = 0; kk < w.k; ++kk) out[kk] = w.packed.data<int8_t>()[at(kk)] * scale;
      break;
    }
    default: {
      const int64_t group = w.sum_group();
      const unsigned char* panel = w.panel(p);
      const uint16_t* scales = w.group_scales(p);
      for (int64_t kk = 0; kk < w.k; ++kk) {
        const uint8_t byte = panel[panel_offset(w.format, j, kk)];
        const int q = (kk % 2 ? byte >> 4 : byte & 0x0F) - 8;
        out[kk] = static_cast<float>(q) * half_to_float(scales[(kk / group) * P + j]);
      }
      break;
    }
  }
}

Tensor linear_effective_weight(const LinearWeight& w) {
  Tensor out = Tensor::empty(DType::f32, {w.n, w.k});
  for (int64_t r = 0; r < w.n; ++r) linear_weight_row(w, r, out.data<float>() + r * w.k);
  return out;
}

namespace {

#if defined(PALI_CPU_AVX2)
// ---------------------------------------------------------------------------
// Weight loads: 16 outputs of one k step as two float vectors.
template <WeightFormat F>
struct PanelLoad;

template <>
struct PanelLoad<WeightFormat::f32> {
  using T = float;
  static PALI_ALWAYS_INLINE void load(const float* p, __m256& w0, __m256& w1) {
    w0 = _mm256_load_ps(p);
    w1 = _mm256_load_ps(p + 8);
  }
};
template <>
struct PanelLoad<WeightFormat::f16> {
  using T = uint16_t;
  static PALI_ALWAYS_INLINE void load(const uint16_t* p, __m256& w0, __m256& w1) {
    w0 = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
    w1 = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p + 8)));
  }
};
template <>
struct PanelLoad<WeightFormat::i8> {
  using T = int8_t;
  static PALI_ALWAYS_INLINE void load(const int8_t* p, __m256& w0, __m256& w1) {
    // 8-byte loads folded into vpmovsxbd (no shuffle for the upper half).
    w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))));
  }
};

// Writes acc (MR rows x 16 columns, a dense [MR][16] buffer) into y:
// y = acc * scale + bias (+ y when accumulate), only the first `nvalid` columns.
// The kernels spill their accumulators into `acc` once, after their loops: with
// register arrays passed by reference GCC keeps them in memory inside the loop.
template <int MR>
PALI_ALWAYS_INLINE void store_rows(const float* acc, float* y, int64_t ldy, int nvalid,
                                   const float* scale, const float* bias, bool accumulate) {
  __m256 s0 = _mm256_set1_ps(1.0f), s1 = s0;
  if (scale) {
    s0 = _mm256_load_ps(scale);
    s1 = _mm256_load_ps(scale + 8);
  }
  __m256 b0 = _mm256_setzero_ps(), b1 = b0;
  if (bias) {
    b0 = _mm256_load_ps(bias);
    b1 = _mm256_load_ps(bias + 8);
  }
  for (int r = 0; r < MR; ++r) {
    __m256 v0 = _mm256_fmadd_ps(_mm256_load_ps(acc + r * 16), s0, b0);
    __m256 v1 = _mm256_fmadd_ps(_mm256_load_ps(acc + r * 16 + 8), s1, b1);
    float* yr = y + r * ldy;
    if (nvalid == 16) {
      if (accumulate) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(yr));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(yr + 8));
      }
      _mm256_storeu_ps(yr, v0);
      _mm256_storeu_ps(yr + 8, v1);
    } else {
      alignas(32) float tmp[16];
      _mm256_store_ps(tmp, v0);
      _mm256_store_ps(tmp + 8, v1);
      for (int j = 0; j < nvalid; ++j) yr[j] = accumulate ? yr[j] + tmp[j] : tmp[j];
    }
  }
}

// ---------------------------------------------------------------------------
// Decode path: MR (<= 4) rows of x times one whole panel (all of K).
// Accumulators are named variables (arrays of __m256 get spilled by GCC).
#define PALI_FMA_ROW(acc, r, xk, w0, w1)                 \
  if constexpr (MR > r) {                                 \
    const __m256 xv = _mm256_broadcast_ss(xk);            \
    acc##r##0 = _mm256_fmadd_ps(xv, w0, acc##r##0);       \
    acc##r##1 = _mm256_fmadd_ps(xv, w1, acc##r##1);       \
  }
#define PALI_SAVE_ROW(acc, r)                             \
  if constexpr (MR > r) {                                 \
    _mm256_store_ps(out + r * 16, acc##r##0);             \
    _mm256_store_ps(out + r * 16 + 8, acc##r##1);         \
  }

template <WeightFormat F, int MR>
PALI_ALWAYS_INLINE void gemv_panel(const float* x, int64_t ldx, const typename PanelLoad<F>::T* w, int64_t k,
                       float* y, int64_t ldy, int nvalid, const float* scale, const float* bias,
                       bool accumulate) {
  const float* x0 = x;
  const float* x1 = x + ldx;
  const float* x2 = x + 2 * ldx;
  const float* x3 = x + 3 * ldx;
  const __m256 z = _mm256_setzero_ps();
  __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
  __m256 d00 = z, d01 = z, d10 = z, d11 = z;  // second set for MR <= 2 (FMA latency)
  int64_t kk = 0;
  if constexpr (MR <= 2) {
    for (; kk + 2 <= k; kk += 2) {
      __m256 w0, w1, v0, v1;
      PanelLoad<F>::load(w + kk * P, w0, w1);
      PanelLoad<F>::load(w + (kk + 1) * P, v0, v1);
      PALI_FMA_ROW(c, 0, x0 + kk, w0, w1)
      PALI_FMA_ROW(d, 0, x0 + kk + 1, v0, v1)
      PALI_FMA_ROW(c, 1, x1 + kk, w0, w1)
      PALI_FMA_ROW(d, 1, x1 + kk + 1, v0, v1)
    }
  }
  for (; kk < k; ++kk) {
    __m256 w0, w1;
    PanelLoad<F>::load(w + kk * P, w0, w1);
    PALI_FMA_ROW(c, 0, x0 + kk, w0, w1)
    PALI_FMA_ROW(c, 1, x1 + kk, w0, w1)
    PALI_FMA_ROW(c, 2, x2 + kk, w0, w1)
    PALI_FMA_ROW(c, 3, x3 + kk, w0, w1)
  }
  c00 = _mm256_add_ps(c00, d00);
  c01 = _mm256_add_ps(c01, d01);
  c10 = _mm256_add_ps(c10, d10);
  c11 = _mm256_add_ps(c11, d11);
  alignas(32) float out[MR * 16];
  PALI_SAVE_ROW(c, 0)
  PALI_SAVE_ROW(c, 1)
  PALI_SAVE_ROW(c, 2)
  PALI_SAVE_ROW(c, 3)
  store_rows<MR>(out, y, ldy, nvalid, scale, bias, accumulate);
}

// Pair formats (bf16, i4): two k (even, odd) of 16 outputs per load, as
// four float vectors: e0/e1 the even k's outputs 0-7/8-15, o0/o1 the odd k's.
// For i4 the values are q (the group's scale is applied by the caller).
template <WeightFormat F>
struct PairLoad;

template <>
struct PairLoad<WeightFormat::bf16> {
  static constexpr int64_t kPairBytes = 2 * P * 2;
  static PALI_ALWAYS_INLINE void load(const unsigned char* p, __m256& e0, __m256& e1, __m256& o0, __m256& o1) {
    // Lane j holds output j's pair: the even k in the low 16 bits, the odd k in the high ones.
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
    const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32));
    e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16));
    e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16));
    o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, high));
    o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, high));
  }
};

struct Int4PairLoad {
  static constexpr int64_t kPairBytes = P;
  static PALI_ALWAYS_INLINE void load(const unsigned char* p, __m256& e0, __m256& e1, __m256& o0, __m256& o1) {
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
    const __m256i low = _mm256_set1_epi32(0x0F);
    const __m256 eight = _mm256_set1_ps(8.0f);
    e0 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, low)), eight);
    e1 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, low)), eight);
    o0 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), eight);
    o1 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), eight);
  }
};
template <> struct PairLoad<WeightFormat::i4_g32> : Int4PairLoad {};
template <> struct PairLoad<WeightFormat::i4_g64> : Int4PairLoad {};
template <> struct PairLoad<WeightFormat::i4_g128> : Int4PairLoad {};

// Up to 2 rows the odd k have accumulators of their own (d), so that the
// chains of dependent FMAs stay short enough to cover their latency.
#define PALI_PAIR_ROW(r, xe, xo)                                                     \
  if constexpr (MR > r) {                                                            \
    const __m256 ve = _mm256_broadcast_ss(xe), vo = _mm256_broadcast_ss(xo);         \
    if constexpr (MR <= 2) {                                                         \
      c##r##0 = _mm256_fmadd_ps(ve, e0, c##r##0);                                    \
      c##r##1 = _mm256_fmadd_ps(ve, e1, c##r##1);                                    \
      d##r##0 = _mm256_fmadd_ps(vo, o0, d##r##0);                                    \
      d##r##1 = _mm256_fmadd_ps(vo, o1, d##r##1);                                    \
    } else {                                                                         \
      c##r##0 = _mm256_fmadd_ps(vo, o0, _mm256_fmadd_ps(ve, e0, c##r##0));           \
      c##r##1 = _mm256_fmadd_ps(vo, o1, _mm256_fmadd_ps(ve, e1, c##r##1));           \
    }                                                                                \
  }
#define PALI_GROUP_ROW(r)                                                            \
  if constexpr (MR > r) {                                                            \
    if (gscale) {                                                                    \
      _mm256_store_ps(out + r * 16, _mm256_fmadd_ps(c##r##0, s0, _mm256_load_ps(out + r * 16)));          \
      _mm256_store_ps(out + r * 16 + 8, _mm256_fmadd_ps(c##r##1, s1, _mm256_load_ps(out + r * 16 + 8)));  \
    } else {                                                                         \
      _mm256_store_ps(out + r * 16, c##r##0);                                        \
      _mm256_store_ps(out + r * 16 + 8, c##r##1);                                    \
    }                                                                                \
  }

// Decode path of a pair format: MR (<= 4) rows of x times one whole panel.
// i4 sums each group on its own and adds it times the group's scales
// (float16, [groups][16]) into `out`; bf16 is one group of all of K.
template <WeightFormat F, int MR>
PALI_ALWAYS_INLINE void gemv_pair_panel(const float* x, int64_t ldx, const unsigned char* w, int64_t k,
                                        int64_t group, const uint16_t* gscale, float* y, int64_t ldy, int nvalid,
                                        const float* bias, bool accumulate) {
  alignas(32) float out[MR * 16] = {};
  const float zero = 0.0f;
  for (int64_t g0 = 0; g0 < k; g0 += group) {
    const int64_t ge = std::min(k, g0 + group);
    const __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    __m256 d00 = z, d01 = z, d10 = z, d11 = z, d20 = z, d21 = z, d30 = z, d31 = z;  // d2x, d3x unused
    int64_t kk = g0;
    for (; kk + 2 <= ge; kk += 2) {
      __m256 e0, e1, o0, o1;
      PairLoad<F>::load(w + (kk / 2) * PairLoad<F>::kPairBytes, e0, e1, o0, o1);
      PALI_PAIR_ROW(0, x + kk, x + kk + 1)
      PALI_PAIR_ROW(1, x + ldx + kk, x + ldx + kk + 1)
      PALI_PAIR_ROW(2, x + 2 * ldx + kk, x + 2 * ldx + kk + 1)
      PALI_PAIR_ROW(3, x + 3 * ldx + kk, x + 3 * ldx + kk + 1)
    }
    if (kk < ge) {  // odd K: the last pair's odd half is padding
      __m256 e0, e1, o0, o1;
      PairLoad<F>::load(w + (kk / 2) * PairLoad<F>::kPairBytes, e0, e1, o0, o1);
      PALI_PAIR_ROW(0, x + kk, &zero)
      PALI_PAIR_ROW(1, x + ldx + kk, &zero)
      PALI_PAIR_ROW(2, x + 2 * ldx + kk, &zero)
      PALI_PAIR_ROW(3, x + 3 * ldx + kk, &zero)
    }
    c00 = _mm256_add_ps(c00, d00);
    c01 = _mm256_add_ps(c01, d01);
    c10 = _mm256_add_ps(c10, d10);
    c11 = _mm256_add_ps(c11, d11);
    __m256 s0 = z, s1 = z;
    if (gscale) {
      const uint16_t* sg = gscale + (g0 / group) * P;
      s0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg)));
      s1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg + 8)));
    }
    PALI_GROUP_ROW(0)
    PALI_GROUP_ROW(1)
    PALI_GROUP_ROW(2)
    PALI_GROUP_ROW(3)
  }
  store_rows<MR>(out, y, ldy, nvalid, nullptr, bias, accumulate);
}

template <WeightFormat F>
void gemv_pair_rows(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
                    bool accumulate) {
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(w.panel_bytes(), 1));
  parallel_for(0, w.num_panels(), grain, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const int nvalid = static_cast<int>(std::min<int64_t>(P, w.n - p * P));
      const float* bp = bias ? bias + p * P : nullptr;
      for (int64_t r0 = 0; r0 < m; r0 += 4)
        dispatch_rows<4>(m - r0, [&](auto rows) {
          gemv_pair_panel<F, decltype(rows)::value>(x + r0 * ldx, ldx, w.panel(p), w.k, w.sum_group(),
                                                    w.group_scales(p), y + r0 * ldy + p * P, ldy, nvalid, bp,
                                                    accumulate);
        });
    }
  });
}

template <WeightFormat F>
void gemv_rows(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y,
               int64_t ldy, bool accumulate) {
  using T = typename PanelLoad<F>::T;
  const T* packed = static_cast<const T*>(w.packed.raw());
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const float* scales = F == WeightFormat::i8 ? w.scales.data<float>() : nullptr;
  const int64_t k = w.k;
  const int64_t panels = w.num_panels();
  // Grain: ~64 KB of weights per chunk at least.
  const int64_t panel_bytes = k * P * static_cast<int64_t>(sizeof(T));
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(panel_bytes, 1));
  parallel_for(0, panels, grain, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const T* wp = packed + p * k * P;
      const int nvalid = static_cast<int>(std::min<int64_t>(P, w.n - p * P));
      const float* sp = scales ? scales + p * P : nullptr;
      const float* bp = bias ? bias + p * P : nullptr;
      float* yp = y + p * P;
      for (int64_t r0 = 0; r0 < m; r0 += 4)
        dispatch_rows<4>(m - r0, [&](auto rows) {
          gemv_panel<F, decltype(rows)::value>(x + r0 * ldx, ldx, wp, k, yp + r0 * ldy, ldy, nvalid, sp, bp,
                                               accumulate);
        });
    }
  });
}

// ---------------------------------------------------------------------------
// Prefill path: GEMM with a 6x16 micro-kernel on float32 panel slices.
constexpr int64_t kMR = 6;
constexpr int64_t kKC = 256;  // K block: a 16 x 256 float slice (16 KB) stays in L1
constexpr int64_t kMC = 96;   // M block: 96 x 256 floats of x (96 KB) stay in L2

// c[MR, 16] (+)= a[MR, kc] . b[kc, 16]; mode 0: c = acc + bias; 1: c += acc + bias; 2: c += acc.
template <int MR>
PALI_ALWAYS_INLINE void micro_kernel(const float* a, int64_t lda, const float* b, int64_t kc, float* c,
                         int64_t ldc, int nvalid, const float* bias, int mode) {
  const float* x0 = a;
  const float* x1 = a + lda;
  const float* x2 = a + 2 * lda;
  const float* x3 = a + 3 * lda;
  const float* x4 = a + 4 * lda;
  const float* x5 = a + 5 * lda;
  const __m256 z = _mm256_setzero_ps();
  __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z,
         c50 = z, c51 = z;
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m256 b0 = _mm256_load_ps(b + kk * P);
    const __m256 b1 = _mm256_load_ps(b + kk * P + 8);
    PALI_FMA_ROW(c, 0, x0 + kk, b0, b1)
    PALI_FMA_ROW(c, 1, x1 + kk, b0, b1)
    PALI_FMA_ROW(c, 2, x2 + kk, b0, b1)
    PALI_FMA_ROW(c, 3, x3 + kk, b0, b1)
    PALI_FMA_ROW(c, 4, x4 + kk, b0, b1)
    PALI_FMA_ROW(c, 5, x5 + kk, b0, b1)
  }
  alignas(32) float out[MR * 16];
  PALI_SAVE_ROW(c, 0)
  PALI_SAVE_ROW(c, 1)
  PALI_SAVE_ROW(c, 2)
  PALI_SAVE_ROW(c, 3)
  PALI_SAVE_ROW(c, 4)
  PALI_SAVE_ROW(c, 5)
  store_rows<MR>(out, c, ldc, nvalid, nullptr, mode == 2 ? nullptr : bias, mode != 0);
}

inline void micro_dispatch(int64_t mr, const float* a, int64_t lda, const float* b, int64_t kc,
                           float* c, int64_t ldc, int nvalid, const float* bias, int mode) {
  dispatch_rows<kMR>(mr, [&](auto rows) {
    micro_kernel<decltype(rows)::value>(a, lda, b, kc, c, ldc, nvalid, bias, mode);
  });
}

// The [kc, 16] float32 slice of panel p at k0 (k0 a multiple of kKC, so of
// every i4 group): a pointer into the packed weights (f32) or the slice
// converted into `scratch` (f16, bf16; i8 and i4 with their scales applied).
template <WeightFormat F>
inline const float* panel_slice(const LinearWeight& w, int64_t p, int64_t k0, int64_t kc,
                                float* scratch) {
  const unsigned char* panel = w.panel(p);
  if constexpr (F == WeightFormat::f32) {
    return reinterpret_cast<const float*>(panel) + k0 * P;
  } else if constexpr (F == WeightFormat::f16 || F == WeightFormat::i8) {
    using T = typename PanelLoad<F>::T;
    const T* src = reinterpret_cast<const T*>(panel) + k0 * P;
    __m256 s0 = _mm256_set1_ps(1.0f), s1 = s0;
    if constexpr (F == WeightFormat::i8) {
      s0 = _mm256_load_ps(w.scales.data<float>() + p * P);
      s1 = _mm256_load_ps(w.scales.data<float>() + p * P + 8);
    }
    for (int64_t kk = 0; kk < kc; ++kk) {
      __m256 w0, w1;
      PanelLoad<F>::load(src + kk * P, w0, w1);
      if constexpr (F == WeightFormat::i8) {
        w0 = _mm256_mul_ps(w0, s0);
        w1 = _mm256_mul_ps(w1, s1);
      }
      _mm256_store_ps(scratch + kk * P, w0);
      _mm256_store_ps(scratch + kk * P + 8, w1);
    }
    return scratch;
  } else {
    // Pair formats: kc is even except at the end of K, where the pair's odd
    // half (padding) is not stored.
    const int64_t group = is_int4(F) ? int4_group_size(F) : 0;
    const uint16_t* scales = w.group_scales(p);
    __m256 s0 = _mm256_set1_ps(1.0f), s1 = s0;
    for (int64_t kk = 0; kk < kc; kk += 2) {
      if (group && (k0 + kk) % group == 0) {
        const uint16_t* sg = scales + ((k0 + kk) / group) * P;
        s0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg)));
        s1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg + 8)));
      }
      __m256 e0, e1, o0, o1;
      PairLoad<F>::load(panel + ((k0 + kk) / 2) * PairLoad<F>::kPairBytes, e0, e1, o0, o1);
      if (group) {
        e0 = _mm256_mul_ps(e0, s0);
        e1 = _mm256_mul_ps(e1, s1);
        o0 = _mm256_mul_ps(o0, s0);
        o1 = _mm256_mul_ps(o1, s1);
      }
      _mm256_store_ps(scratch + kk * P, e0);
      _mm256_store_ps(scratch + kk * P + 8, e1);
      if (kk + 1 < kc) {
        _mm256_store_ps(scratch + (kk + 1) * P, o0);
        _mm256_store_ps(scratch + (kk + 1) * P + 8, o1);
      }
    }
    return scratch;
  }
}

// Rows [r0, r1) x panels [p0, p1) of the product.
template <WeightFormat F>
void gemm_block(const float* x, int64_t ldx, int64_t r0, int64_t r1, const LinearWeight& w,
                int64_t p0, int64_t p1, float* y, int64_t ldy, bool accumulate) {
  alignas(64) float scratch[kKC * P];
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const int64_t k = w.k;
  const int64_t bits = weight_format_bits(F);
  const auto* packed = static_cast<const char*>(w.packed.raw());
  const auto slice_ptr = [&](int64_t p, int64_t k0) { return packed + p * w.panel_bytes() + k0 * P * bits / 8; };
  // Rows [mb, me) x the slice (panel p, K block at k0), prefetching the slice
  // `next` into L2 meanwhile (spread over the micro-kernel calls).
  const auto run_slice = [&](int64_t mb, int64_t me, int64_t p, int64_t k0, const char* next,
                             int64_t next_k0) {
    const int64_t kc = std::min(kKC, k - k0);
    const int mode = k0 > 0 ? 2 : (accumulate ? 1 : 0);
    const float* b = panel_slice<F>(w, p, k0, kc, scratch);
    const int nvalid = static_cast<int>(std::min<int64_t>(P, w.n - p * P));
    const float* bp = bias ? bias + p * P : nullptr;
    const int64_t next_bytes = next ? std::min(kKC, k - next_k0) * P * bits / 8 : 0;
    const int64_t groups = (me - mb + kMR - 1) / kMR;
    const int64_t lines_per_group = (next_bytes / 64 + groups - 1) / groups;
    int64_t line = 0;
    for (int64_t m0 = mb; m0 < me; m0 += kMR) {
      for (int64_t l = 0; l < lines_per_group && line * 64 < next_bytes; ++l, ++line)
        _mm_prefetch(next + line * 64, _MM_HINT_T1);
      micro_dispatch(std::min(kMR, me - m0), x + m0 * ldx + k0, ldx, b, kc, y + m0 * ldy + p * P, ldy,
                     nvalid, bp, mode);
    }
  };
  for (int64_t mb = r0; mb < r1; mb += kMC) {
    const int64_t me = std::min(r1, mb + kMC);
    if ((me - mb) * k * static_cast<int64_t>(sizeof(float)) <= (512 << 10)) {
      // Few rows (their x block stays in L2): each panel start to end, so the
      // weights stream sequentially, once.
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t k0 = 0; k0 < k; k0 += kKC) {
          if (k0 + kKC < k)
            run_slice(mb, me, p, k0, slice_ptr(p, k0 + kKC), k0 + kKC);
          else
            run_slice(mb, me, p, k0, p + 1 < p1 ? slice_ptr(p + 1, 0) : nullptr, 0);
        }
    } else {
      // Many rows: one K block of x at a time across all panels; the next
      // panel's slice is a jump the hardware prefetchers do not follow.
      for (int64_t k0 = 0; k0 < k; k0 += kKC)
        for (int64_t p = p0; p < p1; ++p)
          run_slice(mb, me, p, k0, p + 1 < p1 ? slice_ptr(p + 1, k0) : nullptr, k0);
    }
  }
}

template <WeightFormat F>
void gemm_rows(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y,
               int64_t ldy, bool accumulate) {
  const int64_t panels = w.num_panels();
  const int threads = op_threads();
  if (panels >= 4 * threads || m <= kMC) {
    parallel_for(0, panels, 1, [&](int64_t pb, int64_t pe) {
      gemm_block<F>(x, ldx, 0, m, w, pb, pe, y, ldy, accumulate);
    });
  } else {
    parallel_for_aligned(0, m, kMR, kMR, [&](int64_t rb, int64_t re) {
      gemm_block<F>(x, ldx, rb, re, w, 0, panels, y, ldy, accumulate);
    });
  }
}

template <WeightFormat F>
void linear_impl(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y,
                 int64_t ldy, bool accumulate) {
  if (m > kLinearDecodeMaxRows) {
    gemm_rows<F>(x, ldx, m, w, y, ldy, accumulate);
  } else if constexpr (F == WeightFormat::f32 || F == WeightFormat::f16 || F == WeightFormat::i8) {
    gemv_rows<F>(x, ldx, m, w, y, ldy, accumulate);
  } else {
    gemv_pair_rows<F>(x, ldx, m, w, y, ldy, accumulate);
  }
}
#endif

// ---------------------------------------------------------------------------
// The portable and NEON paths: one register-blocked kernel for every m, MR
// rows of x times one whole panel (all of K), with the weights widened in the
// inner loop (f16 exactly, i8 to its integer value; the i8 scale applied once
// per output at the end). Threads split the panels (decode: at least 64 KB of
// weights per chunk), or the rows when there are fewer than 4 panels per thread.

// 16 outputs of one k step as 16 / kWidth vectors of L.
template <WeightFormat F, typename L>
struct LanePanelLoad;

template <typename L>
struct LanePanelLoad<WeightFormat::f32, L> {
  using T = float;
  static PALI_ALWAYS_INLINE void load(const float* p, typename L::V* w) {
    for (int g = 0; g < P / L::kWidth; ++g) w[g] = L::load(p + g * L::kWidth);
  }
};
template <>
struct LanePanelLoad<WeightFormat::f16, simd::ScalarLanes> {
  using T = uint16_t;
  static PALI_ALWAYS_INLINE void load(const uint16_t* p, float* w) {
    for (int g = 0; g < P; ++g) w[g] = simd::half_bits_to_float(p[g]);
  }
};
template <>
struct LanePanelLoad<WeightFormat::i8, simd::ScalarLanes> {
  using T = int8_t;
  static PALI_ALWAYS_INLINE void load(const int8_t* p, float* w) {
    for (int g = 0; g < P; ++g) w[g] = static_cast<float>(p[g]);
  }
};
#if defined(PALI_CPU_NEON)
template <>
struct LanePanelLoad<WeightFormat::f16, simd::NeonLanes> {
  using T = uint16_t;
  static PALI_ALWAYS_INLINE void load(const uint16_t* p, float32x4_t* w) {
    for (int g = 0; g < 4; ++g) w[g] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p + 4 * g)));
  }
};
template <>
struct LanePanelLoad<WeightFormat::i8, simd::NeonLanes> {
  using T = int8_t;
  static PALI_ALWAYS_INLINE void load(const int8_t* p, float32x4_t* w) {
    const int8x16_t q = vld1q_s8(p);
    const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_high_s8(q);
    w[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    w[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
    w[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    w[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
  }
};
#endif

// y[MR, nvalid] (+)= x[MR, k] . panel[k, 16] * scale + bias.
template <WeightFormat F, typename L, int MR>
PALI_ALWAYS_INLINE void lane_panel_rows(const float* x, int64_t ldx, const typename LanePanelLoad<F, L>::T* w,
                                        int64_t k, float* y, int64_t ldy, int nvalid, const float* scale,
                                        const float* bias, bool accumulate) {
  using V = typename L::V;
  constexpr int G = P / L::kWidth;
  V acc[MR][G];
  for (int r = 0; r < MR; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] = L::zero();
  for (int64_t kk = 0; kk < k; ++kk) {
    V wv[G];
    LanePanelLoad<F, L>::load(w + kk * P, wv);
    for (int r = 0; r < MR; ++r) {
      const V xv = L::set1(x[r * ldx + kk]);
      for (int g = 0; g < G; ++g) acc[r][g] = L::fma(xv, wv[g], acc[r][g]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    alignas(64) float out[P];
    for (int g = 0; g < G; ++g) L::store(out + g * L::kWidth, acc[r][g]);
    float* yr = y + r * ldy;
    for (int j = 0; j < nvalid; ++j) {
      float v = scale ? out[j] * scale[j] : out[j];
      if (bias) v += bias[j];
      yr[j] = accumulate ? yr[j] + v : v;
    }
  }
}

// The lanes kernels' threads: block(p0, p1, r0, r1) over panels (decode: at
// least 64 KB of weights per chunk), or over rows when there are fewer than 4
// panels per thread.
template <typename Block>
void split_lanes(int64_t m, int64_t panels, int64_t panel_bytes, int64_t rows_per_block, const Block& block) {
  if (m <= kLinearDecodeMaxRows) {
    const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(panel_bytes, 1));
    parallel_for(0, panels, grain, [&](int64_t pb, int64_t pe) { block(pb, pe, 0, m); });
  } else if (panels >= 4 * op_threads()) {
    parallel_for(0, panels, 1, [&](int64_t pb, int64_t pe) { block(pb, pe, 0, m); });
  } else {
    parallel_for_aligned(0, m, rows_per_block, rows_per_block,
                         [&](int64_t rb, int64_t re) { block(0, panels, rb, re); });
  }
}

template <WeightFormat F, typename L>
void linear_lanes(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
                  bool accumulate) {
  using T = typename LanePanelLoad<F, L>::T;
  // NEON: 6 rows x 4 vectors of accumulators, 24 of the 32 registers.
  constexpr int kRows = L::kWidth > 1 ? 6 : 4;
  const T* packed = static_cast<const T*>(w.packed.raw());
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const float* scales = F == WeightFormat::i8 ? w.scales.data<float>() : nullptr;
  const int64_t k = w.k, panels = w.num_panels();
  const auto block = [&](int64_t pb, int64_t pe, int64_t rb, int64_t re) {
    for (int64_t p = pb; p < pe; ++p) {
      const int nvalid = static_cast<int>(std::min<int64_t>(P, w.n - p * P));
      for (int64_t r0 = rb; r0 < re; r0 += kRows)
        dispatch_rows<kRows>(re - r0, [&](auto rows) {
          lane_panel_rows<F, L, decltype(rows)::value>(x + r0 * ldx, ldx, packed + p * k * P, k,
                                                       y + r0 * ldy + p * P, ldy, nvalid,
                                                       scales ? scales + p * P : nullptr,
                                                       bias ? bias + p * P : nullptr, accumulate);
        });
    }
  };
  split_lanes(m, panels, k * P * static_cast<int64_t>(sizeof(T)), kRows, block);
}

// Pair formats (bf16, i4): two k (even, odd) of 16 outputs per load, as
// 16 / kWidth vectors each; i4 as q (the caller applies the group's scale).
template <WeightFormat F, typename L>
struct LanePairLoad;

template <>
struct LanePairLoad<WeightFormat::bf16, simd::ScalarLanes> {
  static constexpr int64_t kPairBytes = 2 * P * 2;
  static PALI_ALWAYS_INLINE void load(const unsigned char* p, float* e, float* o) {
    for (int g = 0; g < P; ++g) {
      uint16_t pair[2];
      std::memcpy(pair, p + 4 * g, 4);
      e[g] = bfloat16_to_float(pair[0]);
      o[g] = bfloat16_to_float(pair[1]);
    }
  }
};
struct ScalarInt4PairLoad {
  static constexpr int64_t kPairBytes = P;
  static PALI_ALWAYS_INLINE void load(const unsigned char* p, float* e, float* o) {
    for (int g = 0; g < P; ++g) {
      e[g] = static_cast<float>((p[g] & 0x0F) - 8);
      o[g] = static_cast<float>((p[g] >> 4) - 8);
    }
  }
};
template <> struct LanePairLoad<WeightFormat::i4_g32, simd::ScalarLanes> : ScalarInt4PairLoad {};
template <> struct LanePairLoad<WeightFormat::i4_g64, simd::ScalarLanes> : ScalarInt4PairLoad {};
template <> struct LanePairLoad<WeightFormat::i4_g128, simd::ScalarLanes> : ScalarInt4PairLoad {};
#if defined(PALI_CPU_NEON)
template <>
struct LanePairLoad<WeightFormat::bf16, simd::NeonLanes> {
  static constexpr int64_t kPairBytes = 2 * P * 2;
  static PALI_ALWAYS_INLINE void load(const unsigned char* p, float32x4_t* e, float32x4_t* o) {
    const auto* h = reinterpret_cast<const uint16_t*>(p);
    for (int half = 0; half < 2; ++half) {
      const uint16x8x2_t v = vld2q_u16(h + 16 * half);  // val[0]: even k, val[1]: odd k of 8 outputs
      e[2 * half] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v.val[0]), 16));
      e[2 * half + 1] = vreinterpretq_f32_u32(vshll_high_n_u16(v.val[0], 16));
      o[2 * half] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v.val[1]), 16));
      o[2 * half + 1] = vreinterpretq_f32_u32(vshll_high_n_u16(v.val[1], 16));
    }
  }
};
struct NeonInt4PairLoad {
  static constexpr int64_t kPairBytes = P;
  static PALI_ALWAYS_INLINE void widen(uint8x16_t u, float32x4_t* out) {
    const int16x8_t lo = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(u))), vdupq_n_s16(8));
    const int16x8_t hi = vsubq_s16(vreinterpretq_s16_u16(vmovl_high_u8(u)), vdupq_n_s16(8));
    out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    out[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
    out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    out[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
  }
  static PALI_ALWAYS_INLINE void load(const unsigned char* p, float32x4_t* e, float32x4_t* o) {
    const uint8x16_t b = vld1q_u8(p);
    widen(vandq_u8(b, vdupq_n_u8(0x0F)), e);
    widen(vshrq_n_u8(b, 4), o);
  }
};
template <> struct LanePairLoad<WeightFormat::i4_g32, simd::NeonLanes> : NeonInt4PairLoad {};
template <> struct LanePairLoad<WeightFormat::i4_g64, simd::NeonLanes> : NeonInt4PairLoad {};
template <> struct LanePairLoad<WeightFormat::i4_g128, simd::NeonLanes> : NeonInt4PairLoad {};
#endif

// y[MR, nvalid] (+)= x[MR, k] . panel[k, 16] + bias for a pair format; i4
// sums each group on its own and adds it times the group's float16 scales.
template <WeightFormat F, typename L, int MR>
PALI_ALWAYS_INLINE void lane_pair_rows(const float* x, int64_t ldx, const unsigned char* w, int64_t k,
                                       int64_t group, const uint16_t* gscale, float* y, int64_t ldy, int nvalid,
                                       const float* bias, bool accumulate) {
  using V = typename L::V;
  using Load = LanePairLoad<F, L>;
  constexpr int G = P / L::kWidth;
  alignas(64) float total[MR][P] = {};
  for (int64_t g0 = 0; g0 < k; g0 += group) {
    const int64_t ge = std::min(k, g0 + group);
    V acc[MR][G];
    for (int r = 0; r < MR; ++r)
      for (int g = 0; g < G; ++g) acc[r][g] = L::zero();
    for (int64_t kk = g0; kk < ge; kk += 2) {
      V e[G], o[G];
      Load::load(w + (kk / 2) * Load::kPairBytes, e, o);
      for (int r = 0; r < MR; ++r) {
        const V xe = L::set1(x[r * ldx + kk]);
        const V xo = L::set1(kk + 1 < ge ? x[r * ldx + kk + 1] : 0.0f);
        for (int g = 0; g < G; ++g) acc[r][g] = L::fma(xo, o[g], L::fma(xe, e[g], acc[r][g]));
      }
    }
    for (int r = 0; r < MR; ++r) {
      alignas(64) float sums[P];
      for (int g = 0; g < G; ++g) L::store(sums + g * L::kWidth, acc[r][g]);
      for (int j = 0; j < P; ++j)
        total[r][j] += gscale ? sums[j] * simd::half_bits_to_float(gscale[(g0 / group) * P + j]) : sums[j];
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* yr = y + r * ldy;
    for (int j = 0; j < nvalid; ++j) {
      const float v = bias ? total[r][j] + bias[j] : total[r][j];
      yr[j] = accumulate ? yr[j] + v : v;
    }
  }
}

template <WeightFormat F, typename L>
void linear_pair_lanes(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
                       bool accumulate) {
  constexpr int kRows = L::kWidth > 1 ? 6 : 4;
  const float* bias = w.has_bias ? w.bias.data<float>() : nullptr;
  const auto block = [&](int64_t pb, int64_t pe, int64_t rb, int64_t re) {
    for (int64_t p = pb; p < pe; ++p) {
      const int nvalid = static_cast<int>(std::min<int64_t>(P, w.n - p * P));
      for (int64_t r0 = rb; r0 < re; r0 += kRows)
        dispatch_rows<kRows>(re - r0, [&](auto rows) {
          lane_pair_rows<F, L, decltype(rows)::value>(x + r0 * ldx, ldx, w.panel(p), w.k, w.sum_group(),
                                                      w.group_scales(p), y + r0 * ldy + p * P, ldy, nvalid,
                                                      bias ? bias + p * P : nullptr, accumulate);
        });
    }
  };
  split_lanes(m, w.num_panels(), w.panel_bytes(), kRows, block);
}

enum class FloatKernel : int { avx2, avx512, avx512_bf16, amx, neon, portable };
constexpr FloatKernel kAllFloatKernels[] = {FloatKernel::avx2, FloatKernel::avx512, FloatKernel::avx512_bf16,
                                            FloatKernel::amx, FloatKernel::neon, FloatKernel::portable};

const char* kernel_name(FloatKernel k) {
  switch (k) {
    case FloatKernel::avx2: return "avx2";
    case FloatKernel::avx512: return "avx512";
    case FloatKernel::avx512_bf16: return "avx512_bf16";
    case FloatKernel::amx: return "amx";
    case FloatKernel::neon: return "neon";
    case FloatKernel::portable: return "portable";
  }
  return "?";
}

bool kernel_available(FloatKernel k) {
  switch (k) {
#if defined(PALI_CPU_AVX2)
    case FloatKernel::avx2: return true;
    case FloatKernel::avx512: return linear_avx512::cpu_has_avx512();
    case FloatKernel::avx512_bf16: return linear_avx512::cpu_has_avx512_bf16();
    case FloatKernel::amx: return linear_avx512::cpu_has_amx_bf16();
#endif
#if defined(PALI_CPU_NEON)
    case FloatKernel::neon: return true;
#endif
    case FloatKernel::portable: return true;
    default: return false;
  }
}

std::atomic<int> forced_float_kernel{-1};

FloatKernel best_float_kernel() {
  for (FloatKernel k : {FloatKernel::amx, FloatKernel::avx512_bf16, FloatKernel::avx512, FloatKernel::avx2,
                        FloatKernel::neon}) {
#if defined(PALI_CPU_AVX2)
    // avx512_bf16 differs from avx512 only in the prefill of bf16 weights.
    if (k == FloatKernel::avx512_bf16 && !linear_avx512::bf16_dot_outruns_fma()) continue;
#endif
    if (kernel_available(k)) return k;
  }
  return FloatKernel::portable;
}

FloatKernel active_float_kernel() {
  const int forced = forced_float_kernel.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<FloatKernel>(forced);
  if (cpu_kernels() == CpuKernels::portable) return FloatKernel::portable;
  static const FloatKernel best = best_float_kernel();
  return best;
}

// The chosen kernel for weights of format F.
template <WeightFormat F>
void linear_chosen(const float* x, int64_t ldx, int64_t m, const LinearWeight& w, float* y, int64_t ldy,
                   bool accumulate) {
  const FloatKernel kernel = active_float_kernel();
  if constexpr (F == WeightFormat::i4_g32 || F == WeightFormat::i4_g64 || F == WeightFormat::i4_g128) {
    // W4A8 for decode everywhere, and for prefill on AVX-512 without AMX,
    // where it multiplies 2-2.6x faster than the codes widened to bfloat16
    // (docs/ops.md). AVX2's vpmaddubsw prefill measured no faster than its
    // float one; AMX's bfloat16 tiles and the NEON and portable float kernels keep theirs.
    const bool integer_prefill = kernel == FloatKernel::avx512 || kernel == FloatKernel::avx512_bf16;
    if (m <= kLinearDecodeMaxRows || integer_prefill) {
      // The AVX-512 kernels' integer instructions follow the int8 kernel choice (VNNI or not).
      Int4DecodeKernel decode = Int4DecodeKernel::portable;
      if (kernel == FloatKernel::avx2) {
        decode = Int4DecodeKernel::avx2;
      } else if (kernel == FloatKernel::avx512 || kernel == FloatKernel::avx512_bf16 || kernel == FloatKernel::amx) {
        const std::string integer = int8_kernel();
        decode = integer == "avx512_vnni" || integer == "amx" ? Int4DecodeKernel::avx512_vnni : Int4DecodeKernel::avx512;
      }
      linear_int4_decode(x, ldx, m, w, y, ldy, accumulate, decode);
      return;
    }
  }
#if defined(PALI_CPU_AVX2)
  if (kernel == FloatKernel::avx512 || kernel == FloatKernel::avx512_bf16 || kernel == FloatKernel::amx) {
    using linear_avx512::Bf16Prefill;
    linear_avx512::linear(x, ldx, m, w, y, ldy, accumulate,
                          kernel == FloatKernel::amx           ? Bf16Prefill::amx
                          : kernel == FloatKernel::avx512_bf16 ? Bf16Prefill::avx512_bf16
                                                               : Bf16Prefill::none);
    return;
  }
  if (kernel == FloatKernel::avx2) {
    linear_impl<F>(x, ldx, m, w, y, ldy, accumulate);
    return;
  }
#endif
  const auto lanes_path = [&](auto lanes) {
    if constexpr (F == WeightFormat::f32 || F == WeightFormat::f16 || F == WeightFormat::i8)
      linear_lanes<F, decltype(lanes)>(x, ldx, m, w, y, ldy, accumulate);
    else
      linear_pair_lanes<F, decltype(lanes)>(x, ldx, m, w, y, ldy, accumulate);
  };
#if defined(PALI_CPU_NEON)
  if (kernel == FloatKernel::neon) {
    lanes_path(simd::NeonLanes{});
    return;
  }
#endif
  lanes_path(simd::ScalarLanes{});
}

}  // namespace

void linear_strided(const float* x, int64_t x_stride, int64_t m, const LinearWeight& w, float* y,
                    int64_t y_stride, bool accumulate) {
  PALI_CHECK_ARG(m >= 0, "linear: m must be >= 0, got ", m);
  if (m == 0) return;
  PALI_CHECK_ARG(w.n > 0 && static_cast<int64_t>(w.packed.nbytes()) == w.num_panels() * w.panel_bytes(),
                 "linear: weight not prepared");
  PALI_CHECK_ARG(x != nullptr && y != nullptr, "linear: null x or y");
  PALI_CHECK_ARG(x_stride >= w.k && y_stride >= w.n, "linear: row strides (", x_stride, ", ",
                 y_stride, ") smaller than K = ", w.k, " / N = ", w.n);
  if (w.int8_activations) {
    linear_int8_activations(x, x_stride, m, w, y, y_stride, accumulate);
    return;
  }
  switch (w.format) {
    case WeightFormat::f32: linear_chosen<WeightFormat::f32>(x, x_stride, m, w, y, y_stride, accumulate); break;
    case WeightFormat::f16: linear_chosen<WeightFormat::f16>(x, x_stride, m, w, y, y_stride, accumulate); break;
    case WeightFormat::bf16: linear_chosen<WeightFormat::bf16>(x, x_stride, m, w, y, y_stride, accumulate); break;
    case WeightFormat::i8: linear_chosen<WeightFormat::i8>(x, x_stride, m, w, y, y_stride, accumulate); break;
    case WeightFormat::i4_g32: linear_chosen<WeightFormat::i4_g32>(x, x_stride, m, w, y, y_stride, accumulate); break;
    case WeightFormat::i4_g64: linear_chosen<WeightFormat::i4_g64>(x, x_stride, m, w, y, y_stride, accumulate); break;
    case WeightFormat::i4_g128: linear_chosen<WeightFormat::i4_g128>(x, x_stride, m, w, y, y_stride, accumulate); break;
  }
}

std::vector<std::string> linear_kernels_available() {
  std::vector<std::string> out;
  for (FloatKernel k : kAllFloatKernels)
    if (kernel_available(k)) out.push_back(kernel_name(k));
  return out;
}

std::string linear_kernel() { return kernel_name(active_float_kernel()); }

void set_linear_kernel(const std::string& name) {
  if (name.empty() || name == "auto") {
    forced_float_kernel.store(-1);
    return;
  }
  for (FloatKernel k : kAllFloatKernels)
    if (kernel_available(k) && name == kernel_name(k)) {
      forced_float_kernel.store(static_cast<int>(k));
      return;
    }
  std::string names;
  for (const auto& a : linear_kernels_available()) names += a + ", ";
  throw InvalidArgument(str_cat("linear kernel '", name, "' is not available on this CPU (available: ", names,
                                "or auto)"));
}

void linear(const float* x, int64_t m, const LinearWeight& w, float* y, bool accumulate) {
  linear_strided(x, w.k, m, w, y, w.n, accumulate);
}

}  // namespace pali
