// pali_engine._core.PaliModel: the native model and its generation loop.
//
// Python does the preprocessing (image -> normalized pixels, prompt -> ids);
// this layer checks array shapes, releases the GIL for the whole computation,
// and converts results.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "bindings/gil.h"
#include "core/parallel.h"
#include "generate/search.h"
#include "models/pali_model.h"

namespace pali::bindings {
namespace {

template <typename T>
T config_value(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw InvalidArgument(str_cat("config is missing '", key, "'"));
  try {
    return d[key].cast<T>();
  } catch (const py::cast_error&) {
    throw InvalidArgument(str_cat("config field '", key, "' has the wrong type or is out of range"));
  }
}

PaliConfig config_from_dict(const py::dict& d) {
  PaliConfig c;
#define PALI_FIELD(name) c.name = config_value<decltype(c.name)>(d, #name)
  PALI_FIELD(architecture);
  PALI_FIELD(image_size);
  PALI_FIELD(patch_size);
  PALI_FIELD(num_channels);
  PALI_FIELD(image_mean);
  PALI_FIELD(image_std);
  PALI_FIELD(vision_width);
  PALI_FIELD(vision_depth);
  PALI_FIELD(vision_heads);
  PALI_FIELD(vision_mlp_dim);
  PALI_FIELD(vision_layer_norm_eps);
  PALI_FIELD(d_model);
  PALI_FIELD(d_kv);
  PALI_FIELD(num_heads);
  PALI_FIELD(d_ff);
  PALI_FIELD(encoder_layers);
  PALI_FIELD(decoder_layers);
  PALI_FIELD(feed_forward_proj);
  PALI_FIELD(layer_norm_epsilon);
  PALI_FIELD(relative_attention_num_buckets);
  PALI_FIELD(relative_attention_max_distance);
  PALI_FIELD(vocab_size);
  PALI_FIELD(tie_word_embeddings);
  PALI_FIELD(pad_token_id);
  PALI_FIELD(eos_token_id);
  PALI_FIELD(unk_token_id);
  PALI_FIELD(decoder_start_token_id);
  PALI_FIELD(max_prompt_tokens);
  PALI_FIELD(max_new_tokens);
#undef PALI_FIELD
  c.validate();
  return c;
}

template <typename T>
py::array_t<T, py::array::c_style | py::array::forcecast> checked(const py::array& a, const char* name, int rank) {
  auto out = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!out) throw InvalidArgument(str_cat(name, " must be a numeric array"));
  PALI_CHECK_ARG(out.ndim() == rank, name, " must have ", rank, " dimensions, got ", out.ndim());
  return out;
}

// The model and the thread count its calls use.
struct NativeModel {
  std::shared_ptr<const PaliModel> model;
  int threads = 0;
};

struct Inputs {
  py::array_t<float, py::array::c_style | py::array::forcecast> pixels;
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids, mask;
  int64_t batch = 0, prompt_len = 0;
};

Inputs check_inputs(const PaliConfig& c, const py::array& pixels, const py::array& input_ids,
                    const py::array& attention_mask) {
  Inputs in;
  in.pixels = checked<float>(pixels, "pixel_values", 4);
  in.ids = checked<int64_t>(input_ids, "input_ids", 2);
  in.mask = checked<int64_t>(attention_mask, "attention_mask", 2);
  in.batch = in.pixels.shape(0);
  in.prompt_len = in.ids.shape(1);
  PALI_CHECK_ARG(in.batch > 0, "empty batch");
  PALI_CHECK_ARG(in.pixels.shape(1) == c.num_channels && in.pixels.shape(2) == c.image_size &&
                     in.pixels.shape(3) == c.image_size,
                 "pixel_values must be [batch, ", c.num_channels, ", ", c.image_size, ", ", c.image_size, "]");
  PALI_CHECK_ARG(in.ids.shape(0) == in.batch && in.mask.shape(0) == in.batch && in.mask.shape(1) == in.prompt_len,
                 "input_ids and attention_mask must be [batch, prompt_len] with the batch of pixel_values");
  return in;
}

}  // namespace

GenerationOptions generation_options_from_dict(const py::dict& d) {
  GenerationOptions o;
  for (const auto& item : d) {
    const std::string key = py::str(item.first);
    const py::handle value = item.second;
    try {
      if (key == "max_new_tokens") o.max_new_tokens = value.cast<int64_t>();
      else if (key == "min_new_tokens") o.min_new_tokens = value.cast<int64_t>();
      else if (key == "num_beams") o.num_beams = value.cast<int64_t>();
      else if (key == "length_penalty") o.length_penalty = value.cast<float>();
      else if (key == "early_stopping") {
        if (py::isinstance<py::str>(value)) {
          PALI_CHECK_ARG(value.cast<std::string>() == "never", "early_stopping must be True, False or 'never'");
          o.early_stopping = EarlyStopping::never;
        } else {
          o.early_stopping = value.cast<bool>() ? EarlyStopping::on : EarlyStopping::heuristic;
        }
      } else if (key == "num_return_sequences") o.num_return_sequences = value.cast<int64_t>();
      else if (key == "no_repeat_ngram_size") o.no_repeat_ngram_size = value.cast<int64_t>();
      else if (key == "repetition_penalty") o.repetition_penalty = value.cast<float>();
      else if (key == "do_sample") o.do_sample = value.cast<bool>();
      else if (key == "temperature") o.temperature = value.cast<float>();
      else if (key == "top_k") o.top_k = value.cast<int64_t>();
      else if (key == "top_p") o.top_p = value.cast<float>();
      else if (key == "seed") o.seed = value.cast<uint64_t>();
      else throw InvalidArgument(str_cat("unknown generation option '", key, "'"));
    } catch (const py::cast_error&) {
      throw InvalidArgument(str_cat("generation option '", key, "' has the wrong type or is out of range"));
    }
  }
  o.validate();
  return o;
}

TokenCallback python_token_callback(const py::object& on_token, std::exception_ptr* error) {
  if (on_token.is_none()) return {};
  // Returning false stops the search: when the callback says so, when it
  // raised (re-raised by the caller), and when Python is exiting.
  return [on_token, error](int64_t request, int64_t token) {
    bool keep_going = false;
    try {
      const bool called = with_gil([&] {
        py::object answer = on_token(request, token);
        keep_going = answer.is_none() || answer.cast<bool>();
      });
      return called && keep_going;
    } catch (abi::__forced_unwind&) {
      throw;
    } catch (...) {
      *error = std::current_exception();
      return false;
    }
  };
}

py::tuple generation_results(const std::vector<std::vector<Hypothesis>>& results, const GenerationTimings& timings) {
  py::list out;
  for (const auto& request : results) {
    py::list hyps;
    for (const auto& h : request) hyps.append(py::make_tuple(h.tokens, h.score, h.finished));
    out.append(hyps);
  }
  py::dict t;
  t["vision_ms"] = timings.vision_ms;
  t["encoder_ms"] = timings.encoder_ms;
  t["first_token_ms"] = timings.first_token_ms;
  t["decode_ms"] = timings.decode_ms;
  t["steps"] = timings.steps;
  return py::make_tuple(out, t);
}

void bind_engine(py::module_& m) {
  py::class_<NativeModel>(m, "PaliModel", py::module_local(), "The PaLI model on the engine's own kernels.")
      .def(py::init([](const std::shared_ptr<onnx::OnnxFile>& file, const py::dict& config,
                       const std::string& weight_format, int threads) {
             PaliConfig c = config_from_dict(config);
             WeightFormat format = weight_format_from_name(weight_format);
             PALI_CHECK_ARG(threads >= 0, "threads must be >= 0 (0: all cores), got ", threads);
             NativeModel native;
             native.threads = threads;
             native.model = without_gil([&] {
               ScopedOpThreads scoped(threads);
               return std::make_shared<const PaliModel>(file, c, format);
             });
             return native;
           }),
           py::arg("file"), py::arg("config"), py::arg("weight_format") = "float32", py::arg("threads") = 0)
      .def(
          "forward",
          [](const NativeModel& self, const py::array& pixels, const py::array& input_ids,
             const py::array& attention_mask, const py::array& decoder_input_ids) {
            const PaliConfig& c = self.model->config();
            Inputs in = check_inputs(c, pixels, input_ids, attention_mask);
            auto dec = checked<int64_t>(decoder_input_ids, "decoder_input_ids", 2);
            PALI_CHECK_ARG(dec.shape(0) == in.batch, "decoder_input_ids must have the batch of pixel_values");
            const int64_t target_len = dec.shape(1);
            py::array_t<float> logits({in.batch, target_len, c.vocab_size});
            float* out = logits.mutable_data();
            without_gil([&] {
              ScopedOpThreads scoped(self.threads);
              self.model->forward(in.pixels.data(), in.ids.data(), in.mask.data(), in.batch, in.prompt_len,
                                  dec.data(), target_len, out);
            });
            return logits;
          },
          py::arg("pixel_values"), py::arg("input_ids"), py::arg("attention_mask"), py::arg("decoder_input_ids"),
          "Teacher-forced logits float32[B, T, V], as the ONNX graph computes them.")
      .def(
          "generate",
          [](const NativeModel& self, const py::array& pixels, const py::array& input_ids,
             const py::array& attention_mask, const py::dict& options, const py::object& on_token) {
            const PaliConfig& c = self.model->config();
            Inputs in = check_inputs(c, pixels, input_ids, attention_mask);
            GenerationOptions opts = generation_options_from_dict(options);
            std::exception_ptr callback_error;
            TokenCallback callback = python_token_callback(on_token, &callback_error);
            std::vector<std::vector<Hypothesis>> results;
            GenerationTimings timings;
            without_gil([&] {
              ScopedOpThreads scoped(self.threads);
              EncoderOutput encoded = self.model->encode(in.pixels.data(), in.ids.data(), in.mask.data(),
                                                         in.batch, in.prompt_len);
              timings.vision_ms = encoded.vision_ms;
              timings.encoder_ms = encoded.encoder_ms;
              results = generate(self.model->decoder_for(encoded), opts, callback, &timings);
            });
            if (callback_error) std::rethrow_exception(callback_error);
            return generation_results(results, timings);
          },
          py::arg("pixel_values"), py::arg("input_ids"), py::arg("attention_mask"), py::arg("options"),
          py::arg("on_token") = py::none(),
          "Generates for a batch: ([[ (tokens, score, finished), ... ] per request], timings).")
      .def_property_readonly("weight_format",
                             [](const NativeModel& self) { return weight_format_name(self.model->format()); });
}

}  // namespace pali::bindings
