// pali_engine._core.ops: each op callable on numpy arrays, for tests and kernel sandboxes.
//
// Inputs are converted to C-contiguous float32 (copies where needed); outputs
// are new arrays unless an op updates an argument in place (linear with
// accumulate=True, add_rms_norm's residual), which then must be a writable
// C-contiguous float32 array. The GIL is released while an op runs.
#include <pybind11/stl.h>

#include <atomic>
#include <cstring>
#include <vector>
#include <optional>

#include "bindings/bindings.h"
#include "core/parallel.h"
#include "generate/logits_processors.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/layer_norm.h"
#include "ops/linear.h"
#include "ops/linear_int8.h"
#include "ops/patch_embed.h"
#include "ops/position_bucket.h"
#include "ops/rms_norm.h"
#include "ops/softmax_topk.h"

namespace pali::bindings {
namespace {

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// A writable, C-contiguous float32 array updated in place.
float* inplace_ptr(py::array& a, const char* what) {
  PALI_CHECK_ARG(py::isinstance<py::array_t<float>>(a) && (a.flags() & py::array::c_style) &&
                     a.writeable(),
                 what, " must be a writable C-contiguous float32 array");
  return static_cast<float*>(a.mutable_data());
}

void check_rank(const py::array& a, int rank, const char* what) {
  PALI_CHECK_ARG(a.ndim() == rank, what, " must have ", rank, " dimensions, got ", a.ndim());
}

// Rows x last dimension of an array of any rank >= 1.
std::pair<int64_t, int64_t> rows_cols(const py::array& a) {
  PALI_CHECK_ARG(a.ndim() >= 1, "expected an array with at least one dimension");
  const int64_t cols = a.shape(a.ndim() - 1);
  return {cols == 0 ? 0 : a.size() / cols, cols};
}

FArray new_like(const py::array& a) {
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  return FArray(shape);
}

// A copy of x with the in-place op `apply(data, n)` run on it without the GIL.
template <typename F>
FArray applied_to_copy(const FArray& x, F&& apply) {
  FArray y = new_like(x);
  std::memcpy(y.mutable_data(), x.data(), x.size() * sizeof(float));
  float* yp = y.mutable_data();
  const int64_t n = y.size();
  py::gil_scoped_release release;
  apply(yp, n);
  return y;
}

Tensor weight_tensor(const py::array& a) {
  // float16/float32 through numpy_to_tensor; anything else is rejected by prepare_linear.
  return numpy_to_tensor(a);
}

}  // namespace

void bind_ops(py::module_& parent) {
  py::module_ m = parent.def_submodule("ops", "Single ops on numpy arrays, for testing.");

  m.def("set_threads", &set_op_threads, py::arg("n"),
        "Threads the ops use when called from this Python thread (0: the default, all cores).");
  m.def("get_threads", &op_threads, "Threads the ops use when called from this thread.");

  // ---- the thread pool (core/parallel.h), for tests/test_parallel.py ------
  m.def("parallel_for_visits", [](int64_t begin, int64_t end, int64_t grain, int64_t align, int threads,
                                  bool nested) {
    // Visits per item of [begin, end) and the chunks seen, each chunk checked against align.
    std::vector<std::atomic<int64_t>> counts(static_cast<size_t>(std::max<int64_t>(end - begin, 0)));
    std::atomic<int64_t> misaligned{0}, nested_parallel{0};
    {
      py::gil_scoped_release release;
      ScopedOpThreads scoped(threads);
      const auto visit = [&](int64_t b, int64_t e) {
        if (align > 1 && ((b - begin) % align != 0 || (e != end && (e - begin) % align != 0))) ++misaligned;
        if (nested) {
          parallel_for(b, e, 1, [&](int64_t nb, int64_t ne) {
            if (nb != b || ne != e) ++nested_parallel;  // a nested call must run as one serial chunk
            for (int64_t i = nb; i < ne; ++i) counts[i - begin].fetch_add(1);
          });
          return;
        }
        for (int64_t i = b; i < e; ++i) counts[i - begin].fetch_add(1);
      };
      if (align > 1) parallel_for_aligned(begin, end, align, grain, visit);
      else parallel_for(begin, end, grain, visit);
    }
    std::vector<int64_t> visits(counts.begin(), counts.end());
    return py::make_tuple(py::array_t<int64_t>(visits.size(), visits.data()), misaligned.load(),
                          nested_parallel.load());
  }, py::arg("begin"), py::arg("end"), py::arg("grain"), py::arg("align"), py::arg("threads"),
     py::arg("nested") = false,
     "Counts how often parallel_for (or parallel_for_aligned when align > 1) visits each item.");
  m.def("parallel_rows_check", [](int64_t n, int64_t min_rows, int threads, int passes) {
    // Pass p writes its chunk's rows of phase p after reading every row of phase p - 1;
    // returns (visits per phase and row, wrong reads, chunks smaller than both min_rows and n).
    std::vector<std::atomic<int64_t>> cells(static_cast<size_t>(n * passes));
    for (auto& c : cells) c.store(-1, std::memory_order_relaxed);
    std::vector<std::atomic<int64_t>> visits(static_cast<size_t>(n * passes));
    std::atomic<int64_t> wrong{0}, small{0};
    {
      py::gil_scoped_release release;
      ScopedOpThreads scoped(threads);
      for (int p = 0; p < passes; ++p) {
        parallel_rows(n, min_rows, [&](int64_t rb, int64_t re) {
          if (re - rb < std::min(min_rows, n) / 2) ++small;  // chunks split rows about evenly
          if (p > 0)
            for (int64_t r = 0; r < n; ++r)
              if (cells[(p - 1) * n + r].load(std::memory_order_relaxed) != (p - 1) * n + r) ++wrong;
          for (int64_t r = rb; r < re; ++r) {
            cells[p * n + r].store(p * n + r, std::memory_order_relaxed);
            visits[p * n + r].fetch_add(1);
          }
        });
      }
    }
    std::vector<int64_t> counts(visits.begin(), visits.end());
    return py::make_tuple(py::array_t<int64_t>({static_cast<py::ssize_t>(passes), static_cast<py::ssize_t>(n)},
                                               counts.data()),
                          wrong.load(), small.load());
  }, py::arg("n"), py::arg("min_rows"), py::arg("threads"), py::arg("passes"),
     "Runs parallel_rows passes, each reading every row the pass before wrote.");

  // ---- linear ---------------------------------------------------------------
  py::class_<LinearWeight>(m, "LinearWeight", py::module_local())
      .def_readonly("n", &LinearWeight::n)
      .def_readonly("k", &LinearWeight::k)
      .def_readonly("has_bias", &LinearWeight::has_bias)
      .def_property_readonly("format", [](const LinearWeight& w) { return weight_format_name(w.format); })
      .def_property_readonly("weight_bytes", &LinearWeight::weight_bytes)
      .def_readonly("int8_activations", &LinearWeight::int8_activations,
                    "i8 only: x is quantized per row to int8 too (W8A8).")
      .def("effective_weight", [](const LinearWeight& w) {
        return tensor_to_numpy(linear_effective_weight(w));
      }, "The weight the kernels use, float32 [N, K] (f16-rounded or dequantized).");

  py::class_<PackedArena, std::shared_ptr<PackedArena>>(m, "PackedArena", py::module_local(),
                                                         "Shared huge-page blocks for packed weights.")
      .def(py::init<>());

  m.def(
      "process_logits",
      [](const py::array& scores, const std::vector<std::vector<int64_t>>& sequences, int64_t generated,
         const py::dict& options, int64_t eos_token_id) {
        auto in = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(scores);
        PALI_CHECK_ARG(in && in.ndim() == 2 && static_cast<size_t>(in.shape(0)) == sequences.size(),
                       "scores must be float32[rows, vocab] with one sequence per row");
        const int64_t rows = in.shape(0), vocab = in.shape(1);
        py::array_t<float> out({rows, vocab});
        std::memcpy(out.mutable_data(), in.data(), rows * vocab * sizeof(float));
        LogitsProcessorList list = logits_processors(generation_options_from_dict(options), eos_token_id);
        for (int64_t r = 0; r < rows; ++r) list.process(r, sequences[r], generated, out.mutable_data() + r * vocab, vocab);
        return out;
      },
      py::arg("scores"), py::arg("sequences"), py::arg("generated"), py::arg("options"), py::arg("eos_token_id"),
      "The options' logits processors (logits_processors()) applied to each row of scores, row r being "
      "request r whose sequence so far is sequences[r], after `generated` new tokens.");
  m.def("int8_kernels_available", &int8_kernels_available,
        "The integer kernels of int8_activations this CPU runs ('avx2', 'avx512_vnni'; 'neon', 'neon_dotprod' on "
        "aarch64; 'portable' everywhere).");
  m.def("int8_kernel", &int8_kernel, "The integer kernel in use.");
  m.def("set_int8_kernel", &set_int8_kernel, py::arg("name"),
        "Chooses the integer kernel for the process ('auto': the best available).");

  m.def("linear_kernels_available", &linear_kernels_available,
        "The float kernels of linear() this CPU runs ('avx2', 'avx512', 'avx512_bf16'; 'neon' on aarch64; "
        "'portable' everywhere).");
  m.def("linear_kernel", &linear_kernel, "The float kernel of linear() in use.");
  m.def("set_linear_kernel", &set_linear_kernel, py::arg("name"),
        "Chooses the float kernel of linear() for the process ('auto': the best available).");

  m.def("prepare_linear", [](const py::array& weight, std::optional<py::array> bias,
                             const std::string& format, std::shared_ptr<PackedArena> arena,
                             bool int8_activations) {
    Tensor w = weight_tensor(weight);
    Tensor b;
    if (bias) b = weight_tensor(*bias);
    const WeightFormat f = weight_format_from_name(format);
    py::gil_scoped_release release;
    return prepare_linear(w, bias ? &b : nullptr, f, arena.get(), int8_activations);
  }, py::arg("weight"), py::arg("bias") = py::none(), py::arg("format") = "f32", py::arg("arena") = nullptr,
        py::arg("int8_activations") = false,
        "Prepares a PyTorch-layout weight [N, K] (float32/float16) and optional bias [N], "
        "in `arena` when given (the weight keeps its block alive); int8_activations (i8 only): W8A8.");

  m.def("prepare_linear_raw", [](const py::bytes& buffer, int64_t offset, const std::string& dtype,
                                 int64_t n, int64_t k, const std::string& format) {
    // A weight viewed at an arbitrary byte offset of a buffer (unaligned views,
    // bfloat16 given as raw bits), as the model file reader produces them.
    auto holder = std::make_shared<std::string>(std::string(buffer));
    const DType dt = dtype_from_name(dtype);
    PALI_CHECK_ARG(offset >= 0 && static_cast<size_t>(offset + n * k * dtype_size(dt)) <= holder->size(),
                   "prepare_linear_raw: buffer too small");
    Tensor w = Tensor::view(holder->data() + offset, dt, {n, k}, holder);
    const WeightFormat f = weight_format_from_name(format);
    py::gil_scoped_release release;
    return prepare_linear(w, nullptr, f);
  }, py::arg("buffer"), py::arg("offset"), py::arg("dtype"), py::arg("n"), py::arg("k"),
        py::arg("format") = "f32");

  m.def("prepare_linear_concat", [](const std::vector<py::array>& weights,
                                    std::optional<std::vector<std::optional<py::array>>> biases,
                                    const std::string& format, bool int8_activations) {
    std::vector<Tensor> ws, bs;
    for (const auto& w : weights) ws.push_back(weight_tensor(w));
    std::vector<const Tensor*> wp, bp;
    for (const auto& w : ws) wp.push_back(&w);
    if (biases) {
      bs.resize(biases->size());
      for (size_t i = 0; i < biases->size(); ++i) {
        if ((*biases)[i]) {
          bs[i] = weight_tensor(*(*biases)[i]);
          bp.push_back(&bs[i]);
        } else {
          bp.push_back(nullptr);
        }
      }
    }
    const WeightFormat f = weight_format_from_name(format);
    py::gil_scoped_release release;
    return prepare_linear_concat(wp, bp, f, nullptr, int8_activations);
  }, py::arg("weights"), py::arg("biases") = py::none(), py::arg("format") = "f32",
        py::arg("int8_activations") = false);

  m.def("linear", [](FArray x, const LinearWeight& w, std::optional<py::array> out, bool accumulate) {
    PALI_CHECK_ARG(x.ndim() >= 1 && x.shape(x.ndim() - 1) == w.k, "linear: x must be [..., ", w.k, "]");
    const int64_t m_rows = w.k == 0 ? 0 : x.size() / w.k;
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.back() = w.n;
    py::array y;
    if (out) {
      y = *out;
      PALI_CHECK_ARG(y.size() == m_rows * w.n, "linear: out has ", y.size(), " elements, expected ",
                     m_rows * w.n);
    } else {
      PALI_CHECK_ARG(!accumulate, "linear: accumulate=True needs out");
      y = FArray(shape);
    }
    float* yp = inplace_ptr(y, "out");
    const float* xp = x.data();
    {
      py::gil_scoped_release release;
      linear(xp, m_rows, w, yp, accumulate);
    }
    return y;
  }, py::arg("x"), py::arg("weight"), py::arg("out") = py::none(), py::arg("accumulate") = false,
        "y = x @ W.T + b (into out, or out += ... with accumulate).");

  m.def("linear_strided", [](FArray x, int64_t x_col, const LinearWeight& w, py::array out, int64_t y_col,
                             bool accumulate) {
    // x: [m, Sx], reads columns [x_col, x_col + K) of each row; out: [m, Sy],
    // writes columns [y_col, y_col + N): row strides Sx and Sy.
    check_rank(x, 2, "x");
    check_rank(out, 2, "out");
    PALI_CHECK_ARG(x_col >= 0 && x_col + w.k <= x.shape(1), "linear_strided: x columns out of range");
    PALI_CHECK_ARG(y_col >= 0 && y_col + w.n <= out.shape(1) && out.shape(0) == x.shape(0),
                   "linear_strided: out columns out of range");
    float* yp = inplace_ptr(out, "out") + y_col;
    const float* xp = x.data() + x_col;
    const int64_t m_rows = x.shape(0), sx = x.shape(1), sy = out.shape(1);
    {
      py::gil_scoped_release release;
      linear_strided(xp, sx, m_rows, w, yp, sy, accumulate);
    }
    return out;
  }, py::arg("x"), py::arg("x_col"), py::arg("weight"), py::arg("out"), py::arg("y_col"),
        py::arg("accumulate") = false, "linear() on column slices of wider row-major buffers.");

  // ---- norms ----------------------------------------------------------------
  m.def("layer_norm", [](FArray x, std::optional<FArray> gamma, std::optional<FArray> beta, float eps) {
    auto [rows, d] = rows_cols(x);
    if (gamma) PALI_CHECK_ARG(gamma->size() == d, "layer_norm: gamma must be [", d, "]");
    if (beta) PALI_CHECK_ARG(beta->size() == d, "layer_norm: beta must be [", d, "]");
    FArray y = new_like(x);
    const float* xp = x.data();
    const float* gp = gamma ? gamma->data() : nullptr;
    const float* bp = beta ? beta->data() : nullptr;
    float* yp = y.mutable_data();
    py::gil_scoped_release release;
    layer_norm(xp, rows, d, gp, bp, eps, yp);
    return y;
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps") = 1e-6f);

  m.def("rms_norm", [](FArray x, std::optional<FArray> weight, float eps) {
    auto [rows, d] = rows_cols(x);
    if (weight) PALI_CHECK_ARG(weight->size() == d, "rms_norm: weight must be [", d, "]");
    FArray y = new_like(x);
    const float* xp = x.data();
    const float* wp = weight ? weight->data() : nullptr;
    float* yp = y.mutable_data();
    py::gil_scoped_release release;
    rms_norm(xp, rows, d, wp, eps, yp);
    return y;
  }, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6f);

  m.def("add_rms_norm", [](py::array residual, std::optional<FArray> delta, std::optional<FArray> weight,
                           float eps) {
    auto [rows, d] = rows_cols(residual);
    float* rp = inplace_ptr(residual, "residual");
    if (delta) PALI_CHECK_ARG(delta->size() == rows * d, "add_rms_norm: delta must match residual");
    if (weight) PALI_CHECK_ARG(weight->size() == d, "add_rms_norm: weight must be [", d, "]");
    FArray y = new_like(residual);
    const float* dp = delta ? delta->data() : nullptr;
    const float* wp = weight ? weight->data() : nullptr;
    float* yp = y.mutable_data();
    py::gil_scoped_release release;
    add_rms_norm(rp, dp, rows, d, wp, eps, yp);
    return y;
  }, py::arg("residual"), py::arg("delta"), py::arg("weight"), py::arg("eps") = 1e-6f,
        "residual += delta (in place); returns rms_norm(residual).");

  // ---- activations ----------------------------------------------------------
  m.def("activation", [](FArray x, const std::string& act) {
    const Activation a = activation_from_name(act);
    return applied_to_copy(x, [a](float* y, int64_t n) { activation_inplace(y, n, a); });
  }, py::arg("x"), py::arg("act") = "gelu_tanh");

  m.def("softcap", [](FArray x, float cap) {
    return applied_to_copy(x, [cap](float* y, int64_t n) { softcap_inplace(y, n, cap); });
  }, py::arg("x"), py::arg("cap"), "cap * tanh(x / cap).");

  m.def("gated_activation", [](FArray x, const std::string& act) {
    const Activation a = activation_from_name(act);
    auto [rows, f2] = rows_cols(x);
    PALI_CHECK_ARG(f2 % 2 == 0, "gated_activation: last dimension must be even (gate | up)");
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.back() = f2 / 2;
    FArray y(shape);
    const float* xp = x.data();
    float* yp = y.mutable_data();
    py::gil_scoped_release release;
    gated_activation(xp, rows, f2 / 2, yp, a);
    return y;
  }, py::arg("x"), py::arg("act") = "gelu_tanh", "x: [..., 2F] = gate | up; returns act(gate) * up.");

  // ---- attention ------------------------------------------------------------
  m.def("attention", [](FArray q, FArray k, FArray v, int64_t heads, int64_t head_dim, float scale,
                        int64_t q_col, int64_t k_col, int64_t v_col, std::optional<py::array> key_mask,
                        bool causal, int64_t q_offset, std::optional<FArray> rel_bias,
                        int64_t rel_offset, int64_t kv_batch_divisor, std::optional<int64_t> kv_len,
                        int64_t kv_heads, float softcap,
                        std::optional<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> prefix_lengths,
                        int64_t sliding_window, bool with_lse,
                        std::optional<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> kv_batch_index) {
    // q: [B, Lq, Rq], k: [Bk, Lcap, Rk], v: [Bk, Lcap, Rv]; head h of row r is
    // columns [col + h*head_dim, ...) (q, k, v may be one fused buffer).
    check_rank(q, 3, "q");
    check_rank(k, 3, "k");
    check_rank(v, 3, "v");
    const int64_t hd = heads * head_dim, kv_hd = (kv_heads ? kv_heads : heads) * head_dim;
    PALI_CHECK_ARG(q_col >= 0 && q_col + hd <= q.shape(2) && k_col >= 0 && k_col + kv_hd <= k.shape(2) &&
                       v_col >= 0 && v_col + kv_hd <= v.shape(2),
                   "attention: column ranges outside the rows");
    PALI_CHECK_ARG(k.shape(0) == v.shape(0) && k.shape(1) == v.shape(1), "attention: k and v differ in shape");
    if (kv_batch_index) {
      PALI_CHECK_ARG(kv_batch_index->ndim() == 1 && kv_batch_index->shape(0) == q.shape(0),
                     "kv_batch_index must be [q batch]");
    } else {
      PALI_CHECK_ARG(k.shape(0) * kv_batch_divisor == q.shape(0), "attention: k/v batch ", k.shape(0),
                     " times kv_batch_divisor ", kv_batch_divisor, " != q batch ", q.shape(0));
    }
    AttentionParams p;
    p.batch = q.shape(0);
    p.heads = heads;
    p.q_len = q.shape(1);
    p.kv_len = kv_len ? *kv_len : k.shape(1);
    PALI_CHECK_ARG(p.kv_len >= 0 && p.kv_len <= k.shape(1), "attention: kv_len beyond k");
    p.head_dim = head_dim;
    p.scale = scale;
    p.q = q.data() + q_col;
    p.q_row_stride = q.shape(2);
    p.q_batch_stride = q.shape(1) * q.shape(2);
    p.k = k.data() + k_col;
    p.k_row_stride = k.shape(2);
    p.k_batch_stride = k.shape(1) * k.shape(2);
    p.v = v.data() + v_col;
    p.v_row_stride = v.shape(2);
    p.v_batch_stride = v.shape(1) * v.shape(2);
    FArray out(std::vector<py::ssize_t>{q.shape(0), q.shape(1), hd});
    p.out = out.mutable_data();
    p.out_row_stride = hd;
    p.out_batch_stride = q.shape(1) * hd;
    py::array mask_keep;
    if (key_mask) {
      check_rank(*key_mask, 2, "key_mask");
      PALI_CHECK_ARG(key_mask->shape(0) == k.shape(0) && key_mask->shape(1) >= p.kv_len,
                     "key_mask must be [k batch, >= kv_len]");
      if (py::isinstance<py::array_t<int32_t>>(*key_mask)) {
        mask_keep = py::array_t<int32_t, py::array::c_style | py::array::forcecast>(*key_mask);
        p.mask_type = MaskType::i32;
      } else {
        mask_keep = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>(*key_mask);
        p.mask_type = MaskType::u8;
      }
      p.key_mask = mask_keep.data();
      p.mask_batch_stride = key_mask->shape(1);
    }
    p.causal = causal;
    p.q_offset = q_offset;
    if (rel_bias) {
      check_rank(*rel_bias, 2, "rel_bias");
      PALI_CHECK_ARG(rel_bias->shape(0) == heads, "rel_bias must be [heads, num_rel]");
      p.rel_bias = rel_bias->data();
      p.rel_bias_stride = rel_bias->shape(1);
      p.rel_offset = rel_offset;
    }
    p.kv_batch_divisor = kv_batch_divisor;
    if (kv_batch_index) {
      p.kv_batch_index = kv_batch_index->data();
      p.kv_batches = k.shape(0);
    }
    p.kv_heads = kv_heads;
    p.softcap = softcap;
    p.sliding_window = sliding_window;
    if (prefix_lengths) {
      PALI_CHECK_ARG(prefix_lengths->ndim() == 1 && prefix_lengths->shape(0) == k.shape(0),
                     "prefix_lengths must be [k batch]");
      p.prefix_lengths = prefix_lengths->data();
    }
    FArray lse(std::vector<py::ssize_t>{q.shape(0), q.shape(1), heads});
    if (with_lse) p.lse = lse.mutable_data();
    {
      py::gil_scoped_release release;
      attention(p);
    }
    if (with_lse) return py::object(py::make_tuple(out, lse));
    return py::object(out);
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("heads"), py::arg("head_dim"),
        py::arg("scale") = 1.0f, py::arg("q_col") = 0, py::arg("k_col") = 0, py::arg("v_col") = 0,
        py::arg("key_mask") = py::none(), py::arg("causal") = false, py::arg("q_offset") = 0,
        py::arg("rel_bias") = py::none(), py::arg("rel_offset") = 0, py::arg("kv_batch_divisor") = 1,
        py::arg("kv_len") = py::none(), py::arg("kv_heads") = 0, py::arg("softcap") = 0.0f,
        py::arg("prefix_lengths") = py::none(), py::arg("sliding_window") = 0, py::arg("with_lse") = false,
        py::arg("kv_batch_index") = py::none(),
        "q: [B, Lq, Rq], k/v: [B / kv_batch_divisor, Lcap, R] (or [Bk, Lcap, R], query batch b reading "
        "kv_batch_index[b]); returns [B, Lq, heads*head_dim] (and the log-sum-exp [B, Lq, heads] with with_lse).");

  m.def("merge_attention", [](FArray out_a, FArray lse_a, FArray out_b, FArray lse_b, int64_t heads) {
    PALI_CHECK_ARG(out_a.ndim() == 3 && lse_a.ndim() == 3 && lse_a.shape(2) == heads &&
                       out_a.shape(2) % heads == 0,
                   "merge_attention: out [B, L, heads * head_dim], lse [B, L, heads]");
    for (const FArray* a : {&out_b, &lse_b})
      PALI_CHECK_ARG(a->ndim() == 3 && a->shape(0) == out_a.shape(0) && a->shape(1) == out_a.shape(1),
                     "merge_attention: the two halves differ in shape");
    FArray merged(std::vector<py::ssize_t>(out_a.shape(), out_a.shape() + 3));
    std::memcpy(merged.mutable_data(), out_a.data(), out_a.size() * sizeof(float));
    merge_attention(merged.mutable_data(), lse_a.data(), out_b.data(), lse_b.data(), out_a.shape(0) * out_a.shape(1),
                    heads, out_a.shape(2) / heads);
    return merged;
  }, py::arg("out_a"), py::arg("lse_a"), py::arg("out_b"), py::arg("lse_b"), py::arg("heads"),
        "Attention over two key sets from each set's output and log-sum-exp.");

  // ---- position buckets -----------------------------------------------------
  m.def("relative_position_bucket", [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> rel,
                                       bool bidirectional, int64_t num_buckets, int64_t max_distance) {
    py::array_t<int32_t> out(std::vector<py::ssize_t>(rel.shape(), rel.shape() + rel.ndim()));
    const int64_t* rp = rel.data();
    int32_t* op = out.mutable_data();
    for (py::ssize_t i = 0; i < rel.size(); ++i)
      op[i] = relative_position_bucket(rp[i], bidirectional, num_buckets, max_distance);
    return out;
  }, py::arg("relative_position"), py::arg("bidirectional"), py::arg("num_buckets"),
        py::arg("max_distance"));

  m.def("relative_bias_table", [](FArray embedding, bool bidirectional, int64_t max_distance,
                                  int64_t rel_offset, int64_t num_rel) {
    check_rank(embedding, 2, "embedding");
    const int64_t nb = embedding.shape(0), heads = embedding.shape(1);
    FArray out(std::vector<py::ssize_t>{heads, num_rel});
    relative_bias_table(embedding.data(), nb, heads, bidirectional, max_distance, rel_offset, num_rel,
                        out.mutable_data());
    return out;
  }, py::arg("embedding"), py::arg("bidirectional"), py::arg("max_distance"), py::arg("rel_offset"),
        py::arg("num_rel"), "table[h, c] = embedding[bucket(c - rel_offset), h].");

  // ---- softmax / top-k ------------------------------------------------------
  m.def("log_softmax", [](FArray x) {
    auto [rows, v] = rows_cols(x);
    FArray y = new_like(x);
    const float* xp = x.data();
    float* yp = y.mutable_data();
    py::gil_scoped_release release;
    log_softmax(xp, rows, v, yp);
    return y;
  }, py::arg("x"));

  m.def("topk", [](FArray x, int64_t k) {
    auto [rows, v] = rows_cols(x);
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.back() = k;
    FArray values(shape);
    py::array_t<int64_t> indices(shape);
    const float* xp = x.data();
    float* vp = values.mutable_data();
    int64_t* ip = indices.mutable_data();
    {
      py::gil_scoped_release release;
      topk(xp, rows, v, k, vp, ip);
    }
    return py::make_tuple(values, indices);
  }, py::arg("x"), py::arg("k"), "Top k per row, descending, ties by lower index: (values, int64 indices).");

  // ---- patch embedding ------------------------------------------------------
  m.def("patch_embed", [](FArray pixels, int64_t patch, const LinearWeight& proj,
                          std::optional<FArray> pos_embed) {
    check_rank(pixels, 4, "pixels");
    const int64_t b = pixels.shape(0), c = pixels.shape(1), s = pixels.shape(2);
    PALI_CHECK_ARG(pixels.shape(3) == s, "pixels must be [B, C, S, S]");
    PALI_CHECK_ARG(patch > 0 && s % patch == 0, "patch must divide the image size");
    const int64_t n = (s / patch) * (s / patch);
    if (pos_embed) PALI_CHECK_ARG(pos_embed->size() == n * proj.n, "pos_embed must be [", n, ", ", proj.n, "]");
    FArray out(std::vector<py::ssize_t>{b, n, proj.n});
    const float* px = pixels.data();
    const float* pe = pos_embed ? pos_embed->data() : nullptr;
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      patch_embed(px, b, c, s, patch, proj, pe, op);
    }
    return out;
  }, py::arg("pixels"), py::arg("patch"), py::arg("proj"), py::arg("pos_embed") = py::none());

  m.def("patch_embed_u8", [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> pixels,
                             int64_t patch, FArray mean, FArray std, const LinearWeight& proj,
                             std::optional<FArray> pos_embed) {
    check_rank(pixels, 4, "pixels");
    const int64_t b = pixels.shape(0), s = pixels.shape(1), c = pixels.shape(3);
    PALI_CHECK_ARG(pixels.shape(2) == s, "pixels must be [B, S, S, C]");
    PALI_CHECK_ARG(mean.size() == c && std.size() == c, "mean/std must be [C]");
    PALI_CHECK_ARG(patch > 0 && s % patch == 0, "patch must divide the image size");
    const int64_t n = (s / patch) * (s / patch);
    if (pos_embed) PALI_CHECK_ARG(pos_embed->size() == n * proj.n, "pos_embed must be [", n, ", ", proj.n, "]");
    FArray out(std::vector<py::ssize_t>{b, n, proj.n});
    const uint8_t* px = pixels.data();
    const float* mp = mean.data();
    const float* sp = std.data();
    const float* pe = pos_embed ? pos_embed->data() : nullptr;
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      patch_embed_u8(px, b, c, s, patch, mp, sp, proj, pe, op);
    }
    return out;
  }, py::arg("pixels"), py::arg("patch"), py::arg("mean"), py::arg("std"), py::arg("proj"),
        py::arg("pos_embed") = py::none());
}

}  // namespace pali::bindings
