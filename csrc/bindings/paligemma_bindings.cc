// pali_engine._core.PaliGemmaModel: the "paligemma" architecture on the
// engine's own kernels: teacher-forced logits and generation.
//
// The config is the file's `pali.config` as a dict, nested as transformers
// writes it (`vision_config`, `text_config`); Python has filled in the
// defaults transformers' config classes give.
#include <pybind11/stl.h>

#include <chrono>

#include "bindings/bindings.h"
#include "bindings/gil.h"
#include "core/parallel.h"
#include "generate/search.h"
#include "models/paligemma_model.h"

namespace pali::bindings {
namespace {

template <typename T>
void read(const py::dict& d, const char* section, const char* key, T& out, bool required = true) {
  if (!d.contains(key) || d[key].is_none()) {
    if (required) throw InvalidArgument(str_cat("config", section, " is missing '", key, "'"));
    return;
  }
  try {
    out = d[key].cast<T>();
  } catch (const py::cast_error&) {
    throw InvalidArgument(str_cat("config", section, " field '", key, "' has the wrong type or is out of range"));
  }
}

py::dict section(const py::dict& d, const char* key) {
  if (!d.contains(key) || !py::isinstance<py::dict>(d[key]))
    throw InvalidArgument(str_cat("config is missing the section '", key, "'"));
  return d[key].cast<py::dict>();
}

PaliGemmaConfig paligemma_config_from_dict(const py::dict& d) {
  PaliGemmaConfig c;
  const py::dict v = section(d, "vision_config"), t = section(d, "text_config");
  const char* vs = ".vision_config";
  read(v, vs, "hidden_size", c.vision.hidden_size);
  read(v, vs, "intermediate_size", c.vision.intermediate_size);
  read(v, vs, "num_hidden_layers", c.vision.num_hidden_layers);
  read(v, vs, "num_attention_heads", c.vision.num_attention_heads);
  read(v, vs, "num_channels", c.vision.num_channels, false);
  read(v, vs, "image_size", c.vision.image_size);
  read(v, vs, "patch_size", c.vision.patch_size);
  read(v, vs, "layer_norm_eps", c.vision.layer_norm_eps, false);
  read(v, vs, "hidden_act", c.vision.hidden_act, false);
  const char* ts = ".text_config";
  read(t, ts, "model_type", c.text.model_type);
  read(t, ts, "hidden_size", c.text.hidden_size);
  read(t, ts, "intermediate_size", c.text.intermediate_size);
  read(t, ts, "num_hidden_layers", c.text.num_hidden_layers);
  read(t, ts, "num_attention_heads", c.text.num_attention_heads);
  read(t, ts, "num_key_value_heads", c.text.num_key_value_heads);
  read(t, ts, "head_dim", c.text.head_dim);
  read(t, ts, "rms_norm_eps", c.text.rms_norm_eps, false);
  read(t, ts, "rope_theta", c.text.rope_theta, false);
  read(t, ts, "vocab_size", c.text.vocab_size);
  // Gemma names it hidden_act, Gemma 2 hidden_activation.
  read(t, ts, "hidden_act", c.text.hidden_activation, false);
  read(t, ts, "hidden_activation", c.text.hidden_activation, false);
  read(t, ts, "query_pre_attn_scalar", c.text.query_pre_attn_scalar, false);
  read(t, ts, "attn_logit_softcapping", c.text.attn_logit_softcapping, false);
  read(t, ts, "final_logit_softcapping", c.text.final_logit_softcapping, false);
  read(t, ts, "sliding_window", c.text.sliding_window, false);
  read(t, ts, "layer_types", c.text.layer_types, false);
  read(d, "", "image_token_index", c.image_token_index);
  read(d, "", "projection_dim", c.projection_dim);
  read(d, "", "num_image_tokens", c.num_image_tokens);
  read(d, "", "tie_word_embeddings", c.tie_word_embeddings, false);
  read(t, ts, "pad_token_id", c.pad_token_id, false);
  read(t, ts, "eos_token_id", c.eos_token_id, false);
  read(d, "", "pad_token_id", c.pad_token_id, false);
  read(d, "", "eos_token_id", c.eos_token_id, false);
  c.validate();
  return c;
}

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

void check_pixels(const PaliGemmaConfig& c, const F32Array& pixels) {
  PALI_CHECK_ARG(pixels.ndim() == 4 && pixels.shape(1) == c.vision.num_channels &&
                     pixels.shape(2) == c.vision.image_size && pixels.shape(3) == c.vision.image_size,
                 "pixel_values must be [batch, ", c.vision.num_channels, ", ", c.vision.image_size, ", ",
                 c.vision.image_size, "]");
}

}  // namespace

void bind_paligemma(py::module_& m) {
  py::class_<PaliGemmaModel, std::shared_ptr<PaliGemmaModel>>(m, "PaliGemmaModel", py::module_local(),
                                                                "PaliGemma 1 and 2 on the engine's own kernels.")
      .def(py::init([](const std::shared_ptr<onnx::OnnxFile>& file, const py::dict& config,
                       const std::string& weight_format, int threads) {
             PaliGemmaConfig c = paligemma_config_from_dict(config);
             WeightFormat format = weight_format_from_name(weight_format);
             PALI_CHECK_ARG(threads >= 0, "threads must be >= 0 (0: all cores), got ", threads);
             return without_gil([&] {
               ScopedOpThreads scoped(threads);
               return std::make_shared<PaliGemmaModel>(file, c, format);
             });
           }),
           py::arg("file"), py::arg("config"), py::arg("weight_format") = "f32", py::arg("threads") = 0)
      .def(
          "forward",
          [](const PaliGemmaModel& self, const py::array& pixel_values, const py::array& input_ids,
             const py::array& attention_mask, const py::array& token_type_ids, int threads) {
            const PaliGemmaConfig& c = self.config();
            auto pixels = F32Array::ensure(pixel_values);
            auto ids = I64Array::ensure(input_ids), mask = I64Array::ensure(attention_mask),
                 types = I64Array::ensure(token_type_ids);
            PALI_CHECK_ARG(pixels && ids && mask && types, "forward: the inputs must be numeric arrays");
            check_pixels(c, pixels);
            PALI_CHECK_ARG(ids.ndim() == 2 && ids.shape(0) == pixels.shape(0), "input_ids must be [batch, length]");
            for (const auto* a : {&mask, &types})
              PALI_CHECK_ARG(a->ndim() == 2 && a->shape(0) == ids.shape(0) && a->shape(1) == ids.shape(1),
                             "attention_mask and token_type_ids must have the shape of input_ids");
            const int64_t batch = ids.shape(0), length = ids.shape(1);
            py::array_t<float> logits({batch, length, c.text.vocab_size});
            float* out = logits.mutable_data();
            without_gil([&] {
              ScopedOpThreads scoped(threads);
              self.forward(pixels.data(), ids.data(), mask.data(), types.data(), batch, length, out);
            });
            return logits;
          },
          py::arg("pixel_values"), py::arg("input_ids"), py::arg("attention_mask"), py::arg("token_type_ids"),
          py::arg("threads") = 0, "Teacher-forced logits float32[B, L, V], as the converted ONNX graph computes them.")
      .def(
          "generate",
          [](const PaliGemmaModel& self, const py::array& pixel_values, const py::array& input_ids,
             const py::array& attention_mask, const py::dict& options, const py::object& on_token, int threads) {
            const PaliGemmaConfig& c = self.config();
            auto pixels = F32Array::ensure(pixel_values);
            auto ids = I64Array::ensure(input_ids), mask = I64Array::ensure(attention_mask);
            PALI_CHECK_ARG(pixels && ids && mask, "generate: the inputs must be numeric arrays");
            check_pixels(c, pixels);
            PALI_CHECK_ARG(ids.ndim() == 2 && ids.shape(0) == pixels.shape(0) && mask.ndim() == 2 &&
                               mask.shape(0) == ids.shape(0) && mask.shape(1) == ids.shape(1),
                           "input_ids and attention_mask must be [batch, length] with the batch of pixel_values");
            GenerationOptions opts = generation_options_from_dict(options);
            std::exception_ptr callback_error;
            TokenCallback callback = python_token_callback(on_token, &callback_error);
            std::vector<std::vector<Hypothesis>> results;
            GenerationTimings timings;
            without_gil([&] {
              ScopedOpThreads scoped(threads);
              const auto start = std::chrono::steady_clock::now();
              PaliGemmaPrompts prompts = self.prepare(pixels.data(), ids.data(), mask.data(), ids.shape(0),
                                                      ids.shape(1));
              timings.vision_ms = prompts.vision_ms;
              results = generate(self.decoder_for(prompts), opts, callback, &timings);
              // The prompt pass runs inside the first step: what precedes the first token.
              timings.encoder_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                                       .count() - timings.vision_ms - timings.decode_ms;
            });
            if (callback_error) std::rethrow_exception(callback_error);
            return generation_results(results, timings);
          },
          py::arg("pixel_values"), py::arg("input_ids"), py::arg("attention_mask"), py::arg("options"),
          py::arg("on_token") = py::none(), py::arg("threads") = 0,
          "Generates after each prompt (as PaliGemmaProcessor gives it, without a suffix): "
          "([[ (tokens, score, finished), ... ] per request], timings).")
      .def_property_readonly("weight_format", [](const PaliGemmaModel& self) { return weight_format_name(self.format()); });
}

}  // namespace pali::bindings
