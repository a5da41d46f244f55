// pali_engine._core_cuda.cuda_ops: the CUDA ops callable on numpy arrays, for
// tests against the CPU ops and NumPy/PyTorch references, and for benchmarks.
//
// Each call copies its float32 inputs to the device in the requested dtype
// ("float32", "float16", "bfloat16"; rounded to nearest even), fills every
// output buffer with NaN bit patterns (0xFF bytes) so that an element a kernel
// forgets to write shows up, runs the op, synchronizes, and copies the
// outputs back as float32. With iters > 0 the op is then launched `iters`
// more times on the same buffers, each launch timed with CUDA events, and the
// call returns (result, [milliseconds per launch]).
#ifdef PALI_WITH_CUDA

#include <cuda_runtime.h>
#include <pybind11/stl.h>

#include <cstring>
#include <functional>
#include <optional>
#include <vector>

#include "bindings/bindings.h"
#include "core/cuda_check.h"
#include "core/device.h"
#include "ops/activations_cuda.h"
#include "ops/attention_cuda.h"
#include "ops/layer_norm_cuda.h"
#include "ops/linear_cuda.h"
#include "ops/patch_embed_cuda.h"
#include "ops/rms_norm_cuda.h"
#include "ops/softmax_topk_cuda.h"

namespace pali::bindings {
namespace {

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    PALI_CUDA_CHECK(cudaMalloc(&ptr_, bytes ? bytes : 1));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

DType float_dtype(const std::string& name) {
  const DType dt = dtype_from_name(name);
  PALI_CHECK_ARG(dt == DType::f32 || dt == DType::f16 || dt == DType::bf16,
                 "dtype must be float32, float16 or bfloat16, got ", name);
  return dt;
}

void require_device() {
  PALI_CHECK_ARG(cuda_device_count() > 0, "cuda_ops: no CUDA device available");
}

// float32 host data -> device buffer in dtype.
DeviceBuffer upload(const float* data, size_t n, DType dt) {
  DeviceBuffer buf(n * dtype_size(dt));
  if (dt == DType::f32) {
    PALI_CUDA_CHECK(cudaMemcpy(buf.get(), data, n * 4, cudaMemcpyHostToDevice));
  } else {
    std::vector<uint16_t> bits(n);
    for (size_t i = 0; i < n; ++i)
      bits[i] = dt == DType::f16 ? float_to_half(data[i]) : float_to_bfloat16(data[i]);
    PALI_CUDA_CHECK(cudaMemcpy(buf.get(), bits.data(), n * 2, cudaMemcpyHostToDevice));
  }
  return buf;
}

DeviceBuffer upload(const FArray& a, DType dt) { return upload(a.data(), static_cast<size_t>(a.size()), dt); }

DeviceBuffer upload_optional(const std::optional<FArray>& a, DType dt) {
  return a ? upload(*a, dt) : DeviceBuffer();
}

template <typename T>
DeviceBuffer upload_raw(const py::array_t<T, py::array::c_style | py::array::forcecast>& a) {
  DeviceBuffer buf(static_cast<size_t>(a.size()) * sizeof(T));
  PALI_CUDA_CHECK(cudaMemcpy(buf.get(), a.data(), a.size() * sizeof(T), cudaMemcpyHostToDevice));
  return buf;
}

// An output buffer of n elements of dt, poisoned with NaN bit patterns.
DeviceBuffer poisoned(size_t n, size_t elem_size) {
  DeviceBuffer buf(n * elem_size);
  PALI_CUDA_CHECK(cudaMemset(buf.get(), 0xFF, n * elem_size));
  return buf;
}

FArray download(const DeviceBuffer& buf, DType dt, const std::vector<py::ssize_t>& shape) {
  FArray out(shape);
  const size_t n = static_cast<size_t>(out.size());
  if (dt == DType::f32) {
    PALI_CUDA_CHECK(cudaMemcpy(out.mutable_data(), buf.get(), n * 4, cudaMemcpyDeviceToHost));
  } else {
    std::vector<uint16_t> bits(n);
    PALI_CUDA_CHECK(cudaMemcpy(bits.data(), buf.get(), n * 2, cudaMemcpyDeviceToHost));
    float* o = out.mutable_data();
    for (size_t i = 0; i < n; ++i) o[i] = dt == DType::f16 ? half_to_float(bits[i]) : bfloat16_to_float(bits[i]);
  }
  return out;
}

I32Array download_i32(const DeviceBuffer& buf, const std::vector<py::ssize_t>& shape) {
  I32Array out(shape);
  PALI_CUDA_CHECK(cudaMemcpy(out.mutable_data(), buf.get(), out.size() * 4, cudaMemcpyDeviceToHost));
  return out;
}

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

std::pair<int64_t, int64_t> rows_cols(const py::array& a) {
  PALI_CHECK_ARG(a.ndim() >= 1, "expected an array with at least one dimension");
  const int64_t cols = a.shape(a.ndim() - 1);
  return {cols == 0 ? 0 : a.size() / cols, cols};
}

// Runs `op` once (synchronized, errors checked), then `iters` more times,
// each timed with CUDA events on the default stream. The GIL is released.
std::vector<double> run(const std::function<void()>& op, int iters) {
  std::vector<double> times;
  py::gil_scoped_release release;
  op();
  PALI_CUDA_CHECK(cudaDeviceSynchronize());
  if (iters <= 0) return times;
  cudaEvent_t start, stop;
  PALI_CUDA_CHECK(cudaEventCreate(&start));
  PALI_CUDA_CHECK(cudaEventCreate(&stop));
  for (int w = 0; w < 3; ++w) op();
  for (int i = 0; i < iters; ++i) {
    PALI_CUDA_CHECK(cudaEventRecord(start));
    op();
    PALI_CUDA_CHECK(cudaEventRecord(stop));
    PALI_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    PALI_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  PALI_CUDA_CHECK(cudaDeviceSynchronize());
  return times;
}

py::object with_times(py::object result, const std::vector<double>& times, int iters) {
  if (iters <= 0) return result;
  return py::make_tuple(result, py::cast(times));
}

void check_rank(const py::array& a, int rank, const char* what) {
  PALI_CHECK_ARG(a.ndim() == rank, what, " must have ", rank, " dimensions, got ", a.ndim());
}

}  // namespace

void bind_cuda_ops(py::module_& parent) {
  py::module_ m = parent.def_submodule(
      "cuda_ops", "CUDA ops on numpy arrays (host <-> device copies per call), for tests and benchmarks.");

  m.def("device_name", []() {
    require_device();
    int dev = 0;
    PALI_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    PALI_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    return py::make_tuple(std::string(prop.name), prop.major * 10 + prop.minor, prop.multiProcessorCount);
  }, "(name, compute capability as major*10+minor, multiprocessors) of the current device.");

  m.def("runtime_versions", []() {
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    return py::make_tuple(rt, drv, cublas_version());
  }, "(CUDA runtime, driver, cuBLAS) versions.");

  // ---- norms ----------------------------------------------------------------
  m.def("layer_norm", [](FArray x, std::optional<FArray> gamma, std::optional<FArray> beta, float eps,
                         const std::string& dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    auto [rows, d] = rows_cols(x);
    if (gamma) PALI_CHECK_ARG(gamma->size() == d, "layer_norm: gamma must be [", d, "]");
    if (beta) PALI_CHECK_ARG(beta->size() == d, "layer_norm: beta must be [", d, "]");
    DeviceBuffer dx = upload(x, dt), dg = upload_optional(gamma, dt), db = upload_optional(beta, dt);
    DeviceBuffer dy = poisoned(x.size(), dtype_size(dt));
    auto times = run([&] { layer_norm_cuda(dx.get(), rows, d, dg.get(), db.get(), eps, dy.get(), dt); }, iters);
    return with_times(download(dy, dt, shape_of(x)), times, iters);
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps") = 1e-6f, py::arg("dtype") = "float32",
        py::arg("iters") = 0);

  m.def("rms_norm", [](FArray x, std::optional<FArray> weight, float eps, const std::string& dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    auto [rows, d] = rows_cols(x);
    if (weight) PALI_CHECK_ARG(weight->size() == d, "rms_norm: weight must be [", d, "]");
    DeviceBuffer dx = upload(x, dt), dw = upload_optional(weight, dt);
    DeviceBuffer dy = poisoned(x.size(), dtype_size(dt));
    auto times = run([&] { rms_norm_cuda(dx.get(), rows, d, dw.get(), eps, dy.get(), dt); }, iters);
    return with_times(download(dy, dt, shape_of(x)), times, iters);
  }, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6f, py::arg("dtype") = "float32", py::arg("iters") = 0);

  m.def("add_rms_norm", [](FArray residual, std::optional<FArray> delta, std::optional<FArray> weight, float eps,
                           const std::string& dtype, const std::string& residual_dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype), rdt = float_dtype(residual_dtype);
    auto [rows, d] = rows_cols(residual);
    if (delta) PALI_CHECK_ARG(delta->size() == residual.size(), "add_rms_norm: delta must match residual");
    if (weight) PALI_CHECK_ARG(weight->size() == d, "add_rms_norm: weight must be [", d, "]");
    DeviceBuffer dr = upload(residual, rdt), dd = upload_optional(delta, dt), dw = upload_optional(weight, dt);
    DeviceBuffer dy = poisoned(residual.size(), dtype_size(dt));
    // Timed repeats add delta again each time; the returned residual is after the first call.
    auto times = run([&] { add_rms_norm_cuda(dr.get(), rdt, dd.get(), rows, d, dw.get(), eps, dy.get(), dt); }, 0);
    py::object result = py::make_tuple(download(dy, dt, shape_of(residual)), download(dr, rdt, shape_of(residual)));
    if (iters > 0)
      times = run([&] { add_rms_norm_cuda(dr.get(), rdt, dd.get(), rows, d, dw.get(), eps, dy.get(), dt); }, iters);
    return with_times(result, times, iters);
  }, py::arg("residual"), py::arg("delta"), py::arg("weight"), py::arg("eps") = 1e-6f,
        py::arg("dtype") = "float32", py::arg("residual_dtype") = "float32", py::arg("iters") = 0,
        "Returns (rms_norm(residual + delta) * weight, residual + delta as stored).");

  // ---- activations ----------------------------------------------------------
  m.def("activation", [](FArray x, const std::string& act, const std::string& dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    const Activation a = activation_from_name(act);
    DeviceBuffer dx = upload(x, dt);
    DeviceBuffer dy = poisoned(x.size(), dtype_size(dt));
    auto times = run([&] { activation_cuda(dx.get(), dy.get(), x.size(), a, dt); }, iters);
    return with_times(download(dy, dt, shape_of(x)), times, iters);
  }, py::arg("x"), py::arg("act") = "gelu_tanh", py::arg("dtype") = "float32", py::arg("iters") = 0);

  m.def("gated_activation", [](FArray x, const std::string& act, const std::string& dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    const Activation a = activation_from_name(act);
    auto [rows, f2] = rows_cols(x);
    PALI_CHECK_ARG(f2 % 2 == 0, "gated_activation: last dimension must be even (gate | up)");
    auto shape = shape_of(x);
    shape.back() = f2 / 2;
    DeviceBuffer dx = upload(x, dt);
    DeviceBuffer dy = poisoned(static_cast<size_t>(rows * (f2 / 2)), dtype_size(dt));
    auto times = run([&] { gated_activation_cuda(dx.get(), rows, f2 / 2, dy.get(), a, dt); }, iters);
    return with_times(download(dy, dt, shape), times, iters);
  }, py::arg("x"), py::arg("act") = "gelu_tanh", py::arg("dtype") = "float32", py::arg("iters") = 0);

  // ---- linear -----------------------------------------------------------------
  m.def("linear", [](FArray x, FArray w, std::optional<FArray> b, std::optional<FArray> accumulate_into,
                     const std::string& dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    check_rank(w, 2, "w");
    const int64_t n = w.shape(0), k = w.shape(1);
    PALI_CHECK_ARG(x.ndim() >= 1 && x.shape(x.ndim() - 1) == k, "linear: x must be [..., ", k, "]");
    if (b) PALI_CHECK_ARG(b->size() == n, "linear: b must be [", n, "]");
    const int64_t rows = k == 0 ? 0 : x.size() / k;
    auto shape = shape_of(x);
    shape.back() = n;
    DeviceBuffer dx = upload(x, dt), dw = upload(w, dt), db = upload_optional(b, dt);
    DeviceBuffer dy;
    if (accumulate_into) {
      PALI_CHECK_ARG(accumulate_into->size() == rows * n, "linear: accumulate_into must be [..., ", n, "]");
      dy = upload(*accumulate_into, dt);
    } else {
      dy = poisoned(static_cast<size_t>(rows * n), dtype_size(dt));
    }
    const bool acc = accumulate_into.has_value();
    auto times = run([&] { linear_cuda(dx.get(), k, rows, dw.get(), db.get(), n, k, dy.get(), n, acc, dt); }, 0);
    py::object result = download(dy, dt, shape);
    if (iters > 0)
      times = run([&] { linear_cuda(dx.get(), k, rows, dw.get(), db.get(), n, k, dy.get(), n, acc, dt); }, iters);
    return with_times(result, times, iters);
  }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), py::arg("accumulate_into") = py::none(),
        py::arg("dtype") = "float32", py::arg("iters") = 0,
        "x @ w.T + b (w: [N, K], PyTorch layout), or accumulate_into + x @ w.T + b.");

  // ---- patch embedding -------------------------------------------------------
  auto patch_embed_impl = [](const py::array& pixels, bool u8, int64_t patch, std::optional<FArray> mean,
                             std::optional<FArray> std_, FArray w, std::optional<FArray> b,
                             std::optional<FArray> pos, const std::string& dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    check_rank(pixels, 4, "pixels");
    check_rank(w, 2, "w");
    PatchEmbedCudaParams p;
    p.batch = pixels.shape(0);
    if (u8) {
      p.format = PixelFormat::u8_hwc;
      p.image_size = pixels.shape(1);
      p.channels = pixels.shape(3);
      PALI_CHECK_ARG(pixels.shape(2) == p.image_size, "pixels must be [B, S, S, C]");
    } else {
      p.format = PixelFormat::f32_chw;
      p.channels = pixels.shape(1);
      p.image_size = pixels.shape(2);
      PALI_CHECK_ARG(pixels.shape(3) == p.image_size, "pixels must be [B, C, S, S]");
    }
    p.patch = patch;
    PALI_CHECK_ARG(patch > 0 && p.image_size % patch == 0, "patch must divide the image size");
    PALI_CHECK_ARG(p.channels >= 1 && p.channels <= 8, "1 to 8 channels");
    PALI_CHECK_ARG(mean.has_value() == std_.has_value(), "give both mean and std, or neither");
    PALI_CHECK_ARG(u8 ? mean.has_value() : true, "patch_embed_u8 needs mean and std");
    p.normalize = mean.has_value();
    if (mean) {
      PALI_CHECK_ARG(mean->size() == p.channels && std_->size() == p.channels, "mean/std must be [C]");
      for (int64_t c = 0; c < p.channels; ++c) {
        p.mean[c] = mean->data()[c];
        p.std[c] = std_->data()[c];
      }
    }
    const int64_t g = p.image_size / patch, n_patches = g * g;
    p.width = w.shape(0);
    PALI_CHECK_ARG(w.shape(1) == p.channels * patch * patch, "w must be [W, C*P*P]");
    if (b) PALI_CHECK_ARG(b->size() == p.width, "b must be [W]");
    if (pos) PALI_CHECK_ARG(pos->size() == n_patches * p.width, "pos_embed must be [N, W]");
    p.dtype = dt;
    DeviceBuffer dpix;
    if (u8) {
      dpix = upload_raw<uint8_t>(U8Array(pixels));
    } else {
      dpix = upload(FArray(pixels), DType::f32);
    }
    DeviceBuffer dw = upload(w, dt), db = upload_optional(b, dt), dpos = upload_optional(pos, dt);
    DeviceBuffer dout = poisoned(static_cast<size_t>(p.batch * n_patches * p.width), dtype_size(dt));
    DeviceBuffer ws = poisoned(patch_embed_workspace_bytes(p), 1);
    p.pixels = dpix.get();
    p.weight = dw.get();
    p.bias = db.get();
    p.pos_embed = dpos.get();
    p.out = dout.get();
    auto times = run([&] { patch_embed_cuda(p, ws.get(), ws.bytes()); }, iters);
    return with_times(download(dout, dt, {p.batch, n_patches, p.width}), times, iters);
  };
  m.def("patch_embed_u8", [patch_embed_impl](U8Array pixels, int64_t patch, FArray mean, FArray std_, FArray w,
                                             std::optional<FArray> b, std::optional<FArray> pos,
                                             const std::string& dtype, int iters) {
    return patch_embed_impl(pixels, true, patch, mean, std_, w, b, pos, dtype, iters);
  }, py::arg("pixels"), py::arg("patch"), py::arg("mean"), py::arg("std"), py::arg("w"),
        py::arg("b") = py::none(), py::arg("pos_embed") = py::none(), py::arg("dtype") = "float32",
        py::arg("iters") = 0, "pixels: uint8 [B, S, S, C]; w: [W, C*P*P]; returns [B, N, W].");
  m.def("patch_embed", [patch_embed_impl](FArray pixels, int64_t patch, FArray w, std::optional<FArray> b,
                                          std::optional<FArray> pos, std::optional<FArray> mean,
                                          std::optional<FArray> std_, const std::string& dtype, int iters) {
    return patch_embed_impl(pixels, false, patch, mean, std_, w, b, pos, dtype, iters);
  }, py::arg("pixels"), py::arg("patch"), py::arg("w"), py::arg("b") = py::none(),
        py::arg("pos_embed") = py::none(), py::arg("mean") = py::none(), py::arg("std") = py::none(),
        py::arg("dtype") = "float32", py::arg("iters") = 0,
        "pixels: float32 [B, C, S, S] (normalized here when mean/std are given); returns [B, N, W].");

  // ---- attention ----------------------------------------------------------------
  auto attention_impl = [](bool decode, FArray q, FArray k, FArray v, int64_t heads, int64_t head_dim, float scale,
                           int64_t q_col, int64_t k_col, int64_t v_col, std::optional<py::array> key_mask,
                           bool causal, int64_t q_offset, std::optional<FArray> rel_bias, int64_t rel_offset,
                           int64_t kv_batch_divisor, std::optional<int64_t> kv_len,
                           std::optional<I32Array> kv_index, const std::string& dtype, int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    check_rank(q, 3, "q");
    check_rank(k, 3, "k");
    check_rank(v, 3, "v");
    const int64_t hd = heads * head_dim;
    PALI_CHECK_ARG(q_col >= 0 && q_col + hd <= q.shape(2) && k_col >= 0 && k_col + hd <= k.shape(2) &&
                       v_col >= 0 && v_col + hd <= v.shape(2),
                   "attention: column ranges outside the rows");
    PALI_CHECK_ARG(k.shape(0) == v.shape(0) && k.shape(1) == v.shape(1), "attention: k and v differ in shape");
    AttentionCudaParams p;
    p.dtype = dt;
    p.batch = q.shape(0);
    p.heads = heads;
    p.q_len = q.shape(1);
    p.kv_len = kv_len ? *kv_len : k.shape(1);
    PALI_CHECK_ARG(p.kv_len >= 0 && p.kv_len <= k.shape(1), "attention: kv_len beyond k");
    p.head_dim = head_dim;
    p.scale = scale;
    if (kv_index) {
      check_rank(*kv_index, 2, "kv_index");
      PALI_CHECK_ARG(kv_index->shape(0) == p.batch && kv_index->shape(1) >= p.kv_len,
                     "kv_index must be [q batch, >= kv_len]");
      const int32_t* t = kv_index->data();
      for (int64_t b = 0; b < p.batch; ++b)
        for (int64_t j = 0; j < p.kv_len; ++j) {
          const int32_t s = t[b * kv_index->shape(1) + j];
          PALI_CHECK_ARG(s >= 0 && s < k.shape(0), "kv_index: slot ", s, " outside the cache's ", k.shape(0));
        }
      PALI_CHECK_ARG(kv_batch_divisor >= 1 && p.batch % kv_batch_divisor == 0 &&
                         (!key_mask || key_mask->shape(0) * kv_batch_divisor == p.batch),
                     "attention: key_mask batch times kv_batch_divisor must equal the q batch");
    } else {
      PALI_CHECK_ARG(k.shape(0) * kv_batch_divisor == q.shape(0), "attention: k/v batch ", k.shape(0),
                     " times kv_batch_divisor ", kv_batch_divisor, " != q batch ", q.shape(0));
    }
    DeviceBuffer dq = upload(q, dt), dk = upload(k, dt), dv = upload(v, dt);
    const size_t es = dtype_size(dt);
    p.q = static_cast<const char*>(dq.get()) + q_col * es;
    p.q_row_stride = q.shape(2);
    p.q_batch_stride = q.shape(1) * q.shape(2);
    p.k = static_cast<const char*>(dk.get()) + k_col * es;
    p.k_row_stride = k.shape(2);
    p.k_batch_stride = k.shape(1) * k.shape(2);
    p.v = static_cast<const char*>(dv.get()) + v_col * es;
    p.v_row_stride = v.shape(2);
    p.v_batch_stride = v.shape(1) * v.shape(2);
    DeviceBuffer dout = poisoned(static_cast<size_t>(p.batch * p.q_len * hd), es);
    p.out = dout.get();
    p.out_row_stride = hd;
    p.out_batch_stride = p.q_len * hd;
    DeviceBuffer dmask;
    if (key_mask) {
      check_rank(*key_mask, 2, "key_mask");
      PALI_CHECK_ARG(key_mask->shape(1) >= p.kv_len, "key_mask must be [kv batch, >= kv_len]");
      if (!kv_index) PALI_CHECK_ARG(key_mask->shape(0) == k.shape(0), "key_mask must be [k batch, >= kv_len]");
      if (py::isinstance<py::array_t<int32_t>>(*key_mask)) {
        dmask = upload_raw<int32_t>(I32Array(*key_mask));
        p.mask_type = MaskType::i32;
      } else {
        dmask = upload_raw<uint8_t>(U8Array(*key_mask));
        p.mask_type = MaskType::u8;
      }
      p.key_mask = dmask.get();
      p.mask_batch_stride = key_mask->shape(1);
    }
    p.causal = causal;
    p.q_offset = q_offset;
    DeviceBuffer dbias;
    if (rel_bias) {
      check_rank(*rel_bias, 2, "rel_bias");
      PALI_CHECK_ARG(rel_bias->shape(0) == heads, "rel_bias must be [heads, num_rel]");
      dbias = upload(*rel_bias, DType::f32);
      p.rel_bias = static_cast<const float*>(dbias.get());
      p.rel_bias_stride = rel_bias->shape(1);
      p.rel_offset = rel_offset;
    }
    p.kv_batch_divisor = kv_batch_divisor;
    DeviceBuffer dindex;
    if (kv_index) {
      dindex = upload_raw<int32_t>(*kv_index);
      p.kv_index = static_cast<const int32_t*>(dindex.get());
      p.kv_index_stride = kv_index->shape(1);
    }
    DeviceBuffer ws;
    if (decode) ws = poisoned(attention_decode_workspace_bytes(p), 1);
    auto times = run([&] {
      if (decode)
        attention_decode_cuda(p, ws.get(), ws.bytes());
      else
        attention_cuda(p);
    }, iters);
    return with_times(download(dout, dt, {p.batch, p.q_len, hd}), times, iters);
  };

  m.def("attention", [attention_impl](FArray q, FArray k, FArray v, int64_t heads, int64_t head_dim, float scale,
                                      int64_t q_col, int64_t k_col, int64_t v_col,
                                      std::optional<py::array> key_mask, bool causal, int64_t q_offset,
                                      std::optional<FArray> rel_bias, int64_t rel_offset,
                                      int64_t kv_batch_divisor, std::optional<int64_t> kv_len,
                                      std::optional<I32Array> kv_index, const std::string& dtype, int iters) {
    return attention_impl(false, q, k, v, heads, head_dim, scale, q_col, k_col, v_col, key_mask, causal, q_offset,
                          rel_bias, rel_offset, kv_batch_divisor, kv_len, kv_index, dtype, iters);
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("heads"), py::arg("head_dim"),
        py::arg("scale") = 1.0f, py::arg("q_col") = 0, py::arg("k_col") = 0, py::arg("v_col") = 0,
        py::arg("key_mask") = py::none(), py::arg("causal") = false, py::arg("q_offset") = 0,
        py::arg("rel_bias") = py::none(), py::arg("rel_offset") = 0, py::arg("kv_batch_divisor") = 1,
        py::arg("kv_len") = py::none(), py::arg("kv_index") = py::none(), py::arg("dtype") = "float32",
        py::arg("iters") = 0,
        "Prefill attention, as pali_engine._core.ops.attention plus kv_index and dtype.");

  m.def("attention_decode", [attention_impl](FArray q, FArray k, FArray v, int64_t heads, int64_t head_dim,
                                             float scale, int64_t q_col, int64_t k_col, int64_t v_col,
                                             std::optional<py::array> key_mask, bool causal, int64_t q_offset,
                                             std::optional<FArray> rel_bias, int64_t rel_offset,
                                             int64_t kv_batch_divisor, std::optional<int64_t> kv_len,
                                             std::optional<I32Array> kv_index, const std::string& dtype,
                                             int iters) {
    return attention_impl(true, q, k, v, heads, head_dim, scale, q_col, k_col, v_col, key_mask, causal, q_offset,
                          rel_bias, rel_offset, kv_batch_divisor, kv_len, kv_index, dtype, iters);
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("heads"), py::arg("head_dim"),
        py::arg("scale") = 1.0f, py::arg("q_col") = 0, py::arg("k_col") = 0, py::arg("v_col") = 0,
        py::arg("key_mask") = py::none(), py::arg("causal") = false, py::arg("q_offset") = 0,
        py::arg("rel_bias") = py::none(), py::arg("rel_offset") = 0, py::arg("kv_batch_divisor") = 1,
        py::arg("kv_len") = py::none(), py::arg("kv_index") = py::none(), py::arg("dtype") = "float32",
        py::arg("iters") = 0,
        "Decode attention (q: [B, 1, Rq]) over a cache k/v [slots, capacity, R], split along the cache.");

  m.def("beam_table_reorder", [](I32Array old_table, I32Array parents, int64_t len) {
    require_device();
    check_rank(old_table, 2, "old_table");
    const int64_t batch = old_table.shape(0), stride = old_table.shape(1);
    PALI_CHECK_ARG(parents.size() == batch, "parents must be [batch]");
    for (int64_t b = 0; b < batch; ++b)
      PALI_CHECK_ARG(parents.data()[b] >= 0 && parents.data()[b] < batch, "parents out of range");
    DeviceBuffer dold = upload_raw<int32_t>(old_table), dpar = upload_raw<int32_t>(parents);
    DeviceBuffer dnew = upload_raw<int32_t>(old_table);  // positions past len keep their values
    run([&] {
      beam_table_reorder_cuda(static_cast<const int32_t*>(dold.get()), static_cast<int32_t*>(dnew.get()),
                              static_cast<const int32_t*>(dpar.get()), batch, stride, len);
    }, 0);
    return download_i32(dnew, {batch, stride});
  }, py::arg("old_table"), py::arg("parents"), py::arg("len"),
        "new[b, j] = old[parents[b], j] for j < len, new[b, len] = b.");

  // ---- log_softmax / top-k ---------------------------------------------------------
  m.def("log_softmax_topk", [](FArray x, int64_t k, bool log_probs, bool write_y, const std::string& dtype,
                               int iters) {
    require_device();
    const DType dt = float_dtype(dtype);
    auto [rows, v] = rows_cols(x);
    auto kshape = shape_of(x);
    kshape.back() = k;
    DeviceBuffer dx = upload(x, dt);
    DeviceBuffer dval = poisoned(static_cast<size_t>(rows * k), 4);
    DeviceBuffer didx = poisoned(static_cast<size_t>(rows * k), 4);
    DeviceBuffer dy;
    if (write_y) dy = poisoned(static_cast<size_t>(x.size()), 4);
    auto times = run([&] {
      log_softmax_topk_cuda(dx.get(), dt, rows, v, k, log_probs, static_cast<float*>(dval.get()),
                            static_cast<int32_t*>(didx.get()), static_cast<float*>(dy.get()));
    }, iters);
    py::object y = write_y ? py::object(download(dy, DType::f32, shape_of(x))) : py::object(py::none());
    py::object result = py::make_tuple(download(dval, DType::f32, kshape), download_i32(didx, kshape), y);
    return with_times(result, times, iters);
  }, py::arg("x"), py::arg("k"), py::arg("log_probs") = true, py::arg("write_y") = true,
        py::arg("dtype") = "float32", py::arg("iters") = 0,
        "(top-k values [.., k] float32, indices int32, log_softmax(x) float32 or None).");
}

}  // namespace pali::bindings

#endif  // PALI_WITH_CUDA
