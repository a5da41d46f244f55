// Every path of the CPU kernels, and whole models against the x86 engine:
//
//   arm_test [REFERENCES_DIR [DTYPES]]      DTYPES: those to check, e.g. int8 (default: all)
//
// It runs on any architecture; .ci/arm builds it for aarch64 and runs it under
// qemu-user on CPU models with and without the dot product.
//
// 1. Kernels: each op on odd sizes (not multiples of the vector widths, panels
//    or blocks), through every path this build has (the instruction-set one and
//    the portable one, ops/cpu_kernels.h; every int8 kernel this CPU runs),
//    against a double-precision reference computed here; the int8 kernels must
//    agree bit for bit.
// 2. Models, when REFERENCES_DIR (tests/arm/make_references.py, run by the
//    Python engine on x86) is given: from the same pixel arrays and token ids,
//    first-token logits within tolerance of the x86 ones and generated tokens
//    identical, per model and dtype, on the path the process chose (the
//    default, or PALI_ENGINE_CPU_KERNELS=portable).
// Tolerances of the logits: 1e-4 for float32 and float16 (the same weights,
// float32 sums in another order); 0.5 for int8, where x is quantized at every
// layer: a value that lies on a rounding boundary on one machine and one ulp
// off it on the other moves by a whole step, and that step travels to the
// logits (0.2 measured on the bundled model). Tokens must be identical for all.
// Prints what it measured and a closing "N passed, N failed"; exits 1 on any failure.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "generate/generation_options.h"
#include "models/architectures.h"
#include "models/model.h"
#include "onnx/onnx_file.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/cpu_kernels.h"
#include "ops/layer_norm.h"
#include "ops/linear.h"
#include "ops/linear_int8.h"
#include "ops/patch_embed.h"
#include "ops/rms_norm.h"
#include "ops/softmax_topk.h"

namespace {

using pali::CpuKernels;

int passed = 0, failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::cout << "FAIL " << what << "\n";
  }
}

std::mt19937 rng(20240531);

std::vector<float> uniform(size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> out(n);
  for (float& v : out) v = d(rng);
  return out;
}

pali::Tensor tensor_of(const std::vector<float>& values, int64_t rows, int64_t cols) {
  pali::Tensor t = pali::Tensor::empty(pali::DType::f32, {rows, cols});
  std::memcpy(t.data<float>(), values.data(), values.size() * sizeof(float));
  return t;
}

// The largest |got - want| / (scale + |want| * rel), the measure of every kernel check here.
struct Error {
  double worst = 0;
  void add(double got, double want, double abs_tol, double rel_tol) {
    const double e = std::fabs(got - want) / (abs_tol + rel_tol * std::fabs(want));
    if (!(e <= worst)) worst = e;  // NaN sticks
  }
  bool ok() const { return worst <= 1.0; }
};

// Per op and path: the worst error relative to the tolerance (<= 1 passes).
std::map<std::string, double> worst_by_check;

void record(const std::string& op, const std::string& path, const Error& e) {
  const std::string key = op + " [" + path + "]";
  worst_by_check[key] = std::max(worst_by_check[key], e.worst);
  check(e.ok(), key + ": error " + std::to_string(e.worst) + " of the tolerance");
}

// The paths this build has: the instruction-set one first (where built), then portable.
std::vector<CpuKernels> paths() {
  std::vector<CpuKernels> out;
  pali::set_cpu_kernels(CpuKernels::simd);
  if (pali::cpu_kernels() == CpuKernels::simd) out.push_back(CpuKernels::simd);
  out.push_back(CpuKernels::portable);
  return out;
}

// Runs body(path name) once per path, then restores the process's choice.
template <typename F>
void for_each_path(F&& body) {
  const CpuKernels before = pali::cpu_kernels();
  for (CpuKernels path : paths()) {
    pali::set_cpu_kernels(path);
    body(std::string(pali::cpu_kernels_name()));
  }
  pali::set_cpu_kernels(before);
}

// ------------------------------------------------------------------ kernels

// x as the decode of i4 weights (m <= 8) takes it (ops/linear_int4_decode.h):
// per row and block of 32 inputs, scale = max|x| / 127 (1 for zeros), q =
// round_half_even(x / scale) in [-127, 127], dequantized.
std::vector<float> int8_blocks(const std::vector<float>& x, int64_t m, int64_t k) {
  std::vector<float> out(x.size());
  for (int64_t r = 0; r < m; ++r)
    for (int64_t k0 = 0; k0 < k; k0 += 32) {
      const int64_t k1 = std::min(k, k0 + 32);
      float amax = 0.0f;
      for (int64_t i = k0; i < k1; ++i) amax = std::max(amax, std::fabs(x[r * k + i]));
      const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
      for (int64_t i = k0; i < k1; ++i)
        out[r * k + i] = std::min(127.0f, std::max(-127.0f, std::nearbyint(x[r * k + i] / scale))) * scale;
    }
  return out;
}

void check_linear() {
  struct Size { int64_t m, n, k; };
  const Size sizes[] = {{1, 1, 1}, {3, 17, 5}, {4, 33, 37}, {7, 20, 70}, {9, 31, 19}, {13, 48, 64}, {2, 16, 300},
                        {40, 7, 9}};
  for (pali::WeightFormat format : {pali::WeightFormat::f32, pali::WeightFormat::f16, pali::WeightFormat::bf16,
                                    pali::WeightFormat::i8, pali::WeightFormat::i4_g32, pali::WeightFormat::i4_g64,
                                    pali::WeightFormat::i4_g128}) {
    for (const Size& s : sizes) {
      const pali::Tensor w = tensor_of(uniform(s.n * s.k), s.n, s.k);
      const std::vector<float> b = uniform(s.n), x = uniform(s.m * s.k), y0 = uniform(s.m * s.n);
      pali::Tensor bias = pali::Tensor::empty(pali::DType::f32, {s.n});
      std::memcpy(bias.data<float>(), b.data(), b.size() * sizeof(float));
      const pali::LinearWeight lw = pali::prepare_linear(w, &bias, format);
      const pali::Tensor eff = pali::linear_effective_weight(lw);
      const float* we = eff.data<float>();
      const bool int8_x = pali::is_int4(format) && s.m <= pali::kLinearDecodeMaxRows;
      const std::vector<float> xr = int8_x ? int8_blocks(x, s.m, s.k) : x;
      for (bool accumulate : {false, true}) {
        for_each_path([&](const std::string& path) {
          std::vector<float> y = y0;
          pali::linear(x.data(), s.m, lw, y.data(), accumulate);
          Error e;
          for (int64_t r = 0; r < s.m; ++r)
            for (int64_t n = 0; n < s.n; ++n) {
              double want = b[n], scale = std::fabs(b[n]);
              for (int64_t k = 0; k < s.k; ++k) {
                want += double{xr[r * s.k + k]} * we[n * s.k + k];
                scale += std::fabs(double{xr[r * s.k + k]} * we[n * s.k + k]);
              }
              if (accumulate) {
                want += y0[r * s.n + n];
                scale += std::fabs(y0[r * s.n + n]);
              }
              e.add(y[r * s.n + n], want, 1e-5 * scale + 1e-30, 0);
            }
          record(std::string("linear ") + pali::weight_format_name(format), path, e);
        });
      }
    }
  }
}

// W8A8: every int8 kernel against the exact integer sums, and against each other bit for bit.
void check_linear_int8_activations() {
  struct Size { int64_t m, n, k; };
  const Size sizes[] = {{1, 1, 1}, {1, 17, 33}, {2, 5, 4}, {3, 33, 37}, {9, 20, 70}, {13, 48, 129}, {8, 16, 3}};
  const std::vector<std::string> kernels = pali::int8_kernels_available();
  for (const Size& s : sizes) {
    const pali::Tensor w = tensor_of(uniform(s.n * s.k), s.n, s.k);
    const std::vector<float> b = uniform(s.n);
    std::vector<float> x = uniform(s.m * s.k, -3.0f, 3.0f);
    if (s.m > 1) std::fill(x.begin() + s.k, x.begin() + 2 * s.k, 0.0f);  // an all-zero row: scale 1
    pali::Tensor bias = pali::Tensor::empty(pali::DType::f32, {s.n});
    std::memcpy(bias.data<float>(), b.data(), b.size() * sizeof(float));
    const pali::LinearWeight lw = pali::prepare_linear(w, &bias, pali::WeightFormat::i8, nullptr, true);
    const pali::Tensor eff = pali::linear_effective_weight(lw);
    const float* we = eff.data<float>();
    const float* sw = lw.scales.data<float>();
    // The kernels' quantization of x, reproduced: float32 steps, ties to even.
    std::vector<double> want(s.m * s.n), bound(s.m * s.n);
    for (int64_t r = 0; r < s.m; ++r) {
      float amax = 0;
      for (int64_t k = 0; k < s.k; ++k) amax = std::max(amax, std::fabs(x[r * s.k + k]));
      const float sx = amax > 0 ? amax / 127.0f : 1.0f;
      for (int64_t n = 0; n < s.n; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < s.k; ++k) {
          const double qx = std::min(127.0f, std::max(-127.0f, std::nearbyint(x[r * s.k + k] / sx)));
          acc += qx * std::nearbyint(we[n * s.k + k] / sw[n]);
        }
        want[r * s.n + n] = acc * (double{sx} * sw[n]) + b[n];
        bound[r * s.n + n] = std::fabs(acc) * (double{sx} * sw[n]) + std::fabs(b[n]);
      }
    }
    std::vector<float> first;
    for (const std::string& kernel : kernels) {
      pali::set_int8_kernel(kernel);
      std::vector<float> y(s.m * s.n);
      pali::linear(x.data(), s.m, lw, y.data());
      Error e;
      for (size_t i = 0; i < y.size(); ++i) e.add(y[i], want[i], 1e-6 * bound[i] + 1e-30, 0);
      record("linear W8A8", kernel, e);
      if (first.empty())
        first = y;
      else
        check(std::memcmp(first.data(), y.data(), y.size() * sizeof(float)) == 0,
              "linear W8A8: kernel " + kernel + " differs from " + kernels[0] + " (m=" + std::to_string(s.m) + ")");
    }
    pali::set_int8_kernel("auto");
  }
}

void check_norms() {
  const std::pair<int64_t, int64_t> sizes[] = {{1, 1}, {3, 7}, {5, 16}, {2, 33}, {4, 257}, {1, 1000}};
  for (const auto& [m, d] : sizes) {
    const std::vector<float> x = uniform(m * d, -2.0f, 3.0f), gamma = uniform(d), beta = uniform(d),
                             delta = uniform(m * d);
    for_each_path([&](const std::string& path) {
      std::vector<float> y(m * d);
      pali::layer_norm(x.data(), m, d, gamma.data(), beta.data(), 1e-6f, y.data());
      Error ln;
      for (int64_t r = 0; r < m; ++r) {
        double mean = 0, var = 0;
        for (int64_t j = 0; j < d; ++j) mean += x[r * d + j];
        mean /= d;
        for (int64_t j = 0; j < d; ++j) var += (x[r * d + j] - mean) * (x[r * d + j] - mean);
        const double rstd = 1 / std::sqrt(var / d + 1e-6);
        for (int64_t j = 0; j < d; ++j)
          ln.add(y[r * d + j], (x[r * d + j] - mean) * rstd * gamma[j] + beta[j], 2e-5, 1e-5);
      }
      record("layer_norm", path, ln);

      pali::rms_norm(x.data(), m, d, gamma.data(), 1e-6f, y.data());
      std::vector<float> residual = x, y2(m * d);
      pali::add_rms_norm(residual.data(), delta.data(), m, d, gamma.data(), 1e-6f, y2.data());
      Error rms, add_rms;
      for (int64_t r = 0; r < m; ++r) {
        double sq = 0, sq_added = 0;
        for (int64_t j = 0; j < d; ++j) {
          sq += double{x[r * d + j]} * x[r * d + j];
          const double a = double{x[r * d + j]} + delta[r * d + j];
          sq_added += a * a;
          add_rms.add(residual[r * d + j], a, 1e-6, 1e-6);
        }
        const double inv = 1 / std::sqrt(sq / d + 1e-6), inv_added = 1 / std::sqrt(sq_added / d + 1e-6);
        for (int64_t j = 0; j < d; ++j) {
          rms.add(y[r * d + j], x[r * d + j] * inv * gamma[j], 2e-5, 1e-5);
          add_rms.add(y2[r * d + j], (double{x[r * d + j]} + delta[r * d + j]) * inv_added * gamma[j], 2e-5, 1e-5);
        }
      }
      record("rms_norm", path, rms);
      record("add_rms_norm", path, add_rms);
    });
  }
}

double activation_reference(double x, pali::Activation act) {
  switch (act) {
    case pali::Activation::gelu_tanh: return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case pali::Activation::silu: return x / (1 + std::exp(-x));
    default: return x > 0 ? x : 0;
  }
}

void check_activations() {
  const std::pair<pali::Activation, const char*> acts[] = {
      {pali::Activation::gelu_tanh, "gelu_tanh"}, {pali::Activation::silu, "silu"}, {pali::Activation::relu, "relu"}};
  for (const auto& [act, name] : acts) {
    for (int64_t n : {1, 3, 8, 33, 1001}) {
      std::vector<float> x0 = uniform(n, -9.0f, 9.0f);
      const int64_t m = 3, f = n;
      const std::vector<float> gu = uniform(m * 2 * f, -6.0f, 6.0f);
      for_each_path([&](const std::string& path) {
        std::vector<float> x = x0;
        pali::activation_inplace(x.data(), n, act);
        Error e;
        for (int64_t i = 0; i < n; ++i) e.add(x[i], activation_reference(x0[i], act), 1e-6, 2e-6);
        record(std::string("activation ") + name, path, e);
        std::vector<float> out(m * f);
        pali::gated_activation(gu.data(), m, f, out.data(), act);
        Error g;
        for (int64_t r = 0; r < m; ++r)
          for (int64_t j = 0; j < f; ++j)
            g.add(out[r * f + j], activation_reference(gu[r * 2 * f + j], act) * gu[r * 2 * f + f + j], 1e-6, 4e-6);
        record(std::string("gated_activation ") + name, path, g);
      });
    }
  }
}

void check_softcap() {
  for (int64_t n : {1, 3, 8, 33, 1001}) {
    for (float cap : {30.0f, 0.5f}) {
      const std::vector<float> x0 = uniform(n, -3 * cap, 3 * cap);
      for_each_path([&](const std::string& path) {
        std::vector<float> x = x0;
        pali::softcap_inplace(x.data(), n, cap);
        Error e;
        for (int64_t i = 0; i < n; ++i) e.add(x[i], cap * std::tanh(static_cast<double>(x0[i]) / cap), cap * 4e-7, 2e-6);
        record("softcap", path, e);
      });
    }
  }
}

void check_log_softmax() {
  const std::pair<int64_t, int64_t> sizes[] = {{1, 1}, {2, 7}, {3, 100}, {2, 1003}};
  for (const auto& [m, v] : sizes) {
    std::vector<float> x = uniform(m * v, -30.0f, 30.0f);
    x[0] = -std::numeric_limits<float>::infinity();
    if (v == 1) x[0] = 5.0f;
    for_each_path([&](const std::string& path) {
      std::vector<float> y(m * v);
      pali::log_softmax(x.data(), m, v, y.data());
      Error e;
      for (int64_t r = 0; r < m; ++r) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < v; ++j) mx = std::max(mx, double{x[r * v + j]});
        for (int64_t j = 0; j < v; ++j) sum += std::exp(x[r * v + j] - mx);
        for (int64_t j = 0; j < v; ++j) {
          const double want = x[r * v + j] - mx - std::log(sum);
          if (std::isinf(want))
            e.add(std::isinf(y[r * v + j]) && y[r * v + j] < 0 ? 0 : 1, 0, 1e-9, 0);
          else
            e.add(y[r * v + j], want, 2e-5, 1e-6);
        }
      }
      record("log_softmax", path, e);
    });
  }
}

// Multi-head attention with a key mask, causal or not, a relative bias table and
// K/V shared by pairs of query batches, against the plain softmax in double.
void check_attention() {
  struct Case { int64_t q_len, kv_len, head_dim; bool causal; int64_t q_offset; };
  const Case cases[] = {{1, 1, 5, false, 0}, {7, 9, 16, false, 0}, {1, 150, 37, true, 149}, {6, 300, 8, true, 294},
                        {5, 5, 33, true, 0}, {9, 131, 64, false, 0}, {3, 20, 3, true, 17}};
  const int64_t batch = 4, heads = 3, divisor = 2, kv_batches = batch / divisor;
  for (const Case& c : cases) {
    const int64_t hd = heads * c.head_dim;
    const std::vector<float> q = uniform(batch * c.q_len * hd, -2.0f, 2.0f), k = uniform(kv_batches * c.kv_len * hd, -2.0f, 2.0f),
                             v = uniform(kv_batches * c.kv_len * hd);
    std::vector<uint8_t> mask(kv_batches * c.kv_len, 1);
    for (int64_t j = 0; j < c.kv_len; j += 3) mask[j] = 0;  // K/V batch 0 loses every third key
    const int64_t rel_offset = c.q_offset + c.q_len - 1, num_rel = rel_offset + c.kv_len - c.q_offset;
    const std::vector<float> table = uniform(heads * num_rel);
    pali::AttentionParams p;
    p.batch = batch;
    p.heads = heads;
    p.q_len = c.q_len;
    p.kv_len = c.kv_len;
    p.head_dim = c.head_dim;
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.key_mask = mask.data();
    p.mask_type = pali::MaskType::u8;
    p.causal = c.causal;
    p.q_offset = c.q_offset;
    p.rel_bias = table.data();
    p.rel_bias_stride = num_rel;
    p.rel_offset = rel_offset;
    p.kv_batch_divisor = divisor;
    for_each_path([&](const std::string& path) {
      std::vector<float> out(batch * c.q_len * hd, NAN);
      p.out = out.data();
      pali::attention(p);
      Error e;
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t i = 0; i < c.q_len; ++i) {
            const int64_t kvb = b / divisor, pos = c.q_offset + i;
            std::vector<double> s(c.kv_len, -INFINITY);
            double mx = -INFINITY;
            for (int64_t j = 0; j < c.kv_len; ++j) {
              if (!mask[kvb * c.kv_len + j] || (c.causal && j > pos)) continue;
              double dot = 0;
              for (int64_t t = 0; t < c.head_dim; ++t)
                dot += double{q[(b * c.q_len + i) * hd + h * c.head_dim + t]} * k[(kvb * c.kv_len + j) * hd + h * c.head_dim + t];
              s[j] = dot * p.scale + table[h * num_rel + (j - pos) + rel_offset];
              mx = std::max(mx, s[j]);
            }
            double sum = 0;
            for (int64_t j = 0; j < c.kv_len; ++j) sum += std::isinf(s[j]) ? 0 : std::exp(s[j] - mx);
            for (int64_t t = 0; t < c.head_dim; ++t) {
              double want = 0;
              for (int64_t j = 0; j < c.kv_len; ++j)
                if (!std::isinf(s[j])) want += std::exp(s[j] - mx) / sum * v[(kvb * c.kv_len + j) * hd + h * c.head_dim + t];
              e.add(out[(b * c.q_len + i) * hd + h * c.head_dim + t], sum > 0 ? want : 0.0, 2e-5, 1e-4);
            }
          }
      record("attention", path, e);
    });
  }
}

void check_patch_embed() {
  const int64_t batch = 2, channels = 3, size = 12, patch = 4, width = 19, grid = size / patch, n = grid * grid,
                kdim = channels * patch * patch;
  const std::vector<float> pixels = uniform(batch * channels * size * size), pos = uniform(n * width);
  const pali::Tensor w = tensor_of(uniform(width * kdim), width, kdim);
  const pali::LinearWeight lw = pali::prepare_linear(w, nullptr, pali::WeightFormat::f32);
  for_each_path([&](const std::string& path) {
    std::vector<float> out(batch * n * width);
    pali::patch_embed(pixels.data(), batch, channels, size, patch, lw, pos.data(), out.data());
    Error e;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t o = 0; o < width; ++o) {
          double want = pos[t * width + o], scale = std::fabs(want);
          for (int64_t c = 0; c < channels; ++c)
            for (int64_t i = 0; i < patch; ++i)
              for (int64_t j = 0; j < patch; ++j) {
                const double px = pixels[((b * channels + c) * size + (t / grid) * patch + i) * size + (t % grid) * patch + j];
                const double term = px * w.data<float>()[o * kdim + (c * patch + i) * patch + j];
                want += term;
                scale += std::fabs(term);
              }
          e.add(out[(b * n + t) * width + o], want, 1e-5 * scale, 0);
        }
    record("patch_embed", path, e);
  });
}

// ------------------------------------------------------------------ models

std::string folder;

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> out(1);
  for (char ch : text) {
    if (ch == separator)
      out.emplace_back();
    else
      out.back() += ch;
  }
  return out;
}

template <typename T>
std::vector<T> read_array(const std::string& name) {
  std::ifstream in(folder + "/" + name, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// A model file in the folder, loaded once per dtype.
std::shared_ptr<const pali::Model> model_of(const std::string& name, const std::string& dtype) {
  static std::map<std::string, std::shared_ptr<const pali::Model>> loaded;
  auto& model = loaded[name + " " + dtype];
  if (!model) {
    const pali::WeightFormat format = dtype == "int8" ? pali::WeightFormat::i8
                                      : dtype == "float16" ? pali::WeightFormat::f16
                                                           : pali::WeightFormat::f32;
    model = pali::load_model(pali::onnx::OnnxFile::open(folder + "/" + name), format);
  }
  return model;
}

struct Inputs {
  std::vector<float> pixels;
  std::vector<int64_t> ids, mask;
  pali::PromptBatch batch() const {
    return {pixels.data(), ids.data(), mask.data(), static_cast<int64_t>(pixels.empty() ? 0 : batch_size),
            length};
  }
  int64_t batch_size = 0, length = 0;
};

// Fields from 2: BATCH LENGTH PIXELS.f32 IDS.i64 MASK.i64
Inputs inputs_of(const std::vector<std::string>& f) {
  Inputs in;
  in.batch_size = std::stoll(f[3]);
  in.length = std::stoll(f[4]);
  in.pixels = read_array<float>(f[5]);
  in.ids = read_array<int64_t>(f[6]);
  in.mask = read_array<int64_t>(f[7]);
  return in;
}

// Per model and dtype: the largest logit difference and the token checks.
struct ModelStats {
  double worst_logit = 0;
  int sequences = 0, identical = 0;
};

void check_models(const std::string& dtypes) {
  std::ifstream in(folder + "/references.tsv");
  if (!in) {
    check(false, "no " + folder + "/references.tsv");
    return;
  }
  const std::map<std::string, double> tolerance = {{"float32", 1e-4}, {"float16", 1e-4}, {"int8", 0.5}};
  const auto wanted = split(dtypes, ',');
  std::map<std::string, ModelStats> stats;
  std::map<std::string, int64_t> eos;  // per model file
  std::string line;
  const auto start = std::chrono::steady_clock::now();
  while (std::getline(in, line)) {
    const auto f = split(line, '\t');
    const std::string& kind = f[0];
    const std::string key = f[1] + " " + f[2];
    if (!dtypes.empty() && std::find(wanted.begin(), wanted.end(), f[2]) == wanted.end()) continue;
    const auto model = model_of(f[1], f[2]);
    const Inputs inputs = inputs_of(f);
    if (kind == "logits") {
      const auto want = read_array<float>(f[8]);
      const auto decoder = model->prepare(inputs.batch());
      eos[f[1]] = decoder->special_tokens().eos;
      std::vector<float> got(static_cast<size_t>(decoder->vocab_size()) * inputs.batch_size);
      decoder->start(1, 1)->first(got.data());
      double worst = got.size() == want.size() ? 0 : INFINITY;
      for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
        const double d = std::fabs(double{got[i]} - want[i]);
        if (!(d <= worst)) worst = d;
      }
      stats[key].worst_logit = std::max(stats[key].worst_logit, worst);
      check(worst <= tolerance.at(f[2]), key + ": first-token logits differ by " + std::to_string(worst));
    } else if (kind == "generate") {
      pali::GenerationOptions options;
      options.num_beams = std::stoll(f[8]);
      options.max_new_tokens = std::stoll(f[9]);
      pali::GenerationTimings timings;
      const auto hypotheses = model->generate(inputs.batch(), options, nullptr, &timings);
      const auto sequences = split(f[10], ';');
      for (size_t i = 0; i < sequences.size(); ++i) {
        std::string got;
        if (i < hypotheses.size() && !hypotheses[i].empty()) {
          auto tokens = hypotheses[i][0].tokens;
          if (hypotheses[i][0].finished) tokens.push_back(eos.at(f[1]));
          for (size_t t = 0; t < tokens.size(); ++t) got += (t ? "," : "") + std::to_string(tokens[t]);
        }
        ++stats[key].sequences;
        stats[key].identical += got == sequences[i];
        check(got == sequences[i], key + " beams " + f[8] + " input " + std::to_string(i) + ": tokens " + got +
                                       ", x86 " + sequences[i]);
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& [key, s] : stats)
    std::printf("model %-28s logits max |diff| %.3g, tokens identical %d/%d\n", key.c_str(), s.worst_logit,
                s.identical, s.sequences);
  std::printf("models checked in %.1f s\n", seconds);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const CpuKernels chosen = pali::cpu_kernels();
    std::printf("CPU kernels: %s (int8: %s; available: ", pali::cpu_kernels_name(), pali::int8_kernel().c_str());
    for (const auto& k : pali::int8_kernels_available()) std::printf("%s ", k.c_str());
    std::printf("; dot product: %s)\n", pali::cpu_has_dotprod() ? "yes" : "no");
    const auto start = std::chrono::steady_clock::now();
    check_linear();
    check_linear_int8_activations();
    check_norms();
    check_activations();
    check_softcap();
    check_log_softmax();
    check_attention();
    check_patch_embed();
    pali::set_cpu_kernels(chosen);
    for (const auto& [key, worst] : worst_by_check)
      std::printf("kernel %-32s worst error %.3f of the tolerance\n", key.c_str(), worst);
    std::printf("kernels checked in %.1f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (argc > 1) {
      folder = argv[1];
      check_models(argc > 2 ? argv[2] : "");
    }
  } catch (const std::exception& error) {
    check(false, std::string("exception: ") + error.what());
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
