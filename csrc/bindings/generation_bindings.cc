// What every model's generate() binding shares: the generation options from
// Python's keyword arguments, the token callback into Python, and the results
// back as Python lists.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <random>

#include "bindings/bindings.h"
#include "bindings/gil.h"

namespace pali::bindings {

namespace {

// A Python value classified for parse_generation_options (numpy scalars included).
OptionValue option_value(const py::handle& value) {
  // Handles kept for the process's life: never released, so nothing touches Python at exit.
  static const py::handle short_repr = py::module_::import("pali_engine.errors").attr("short_repr").cast<py::object>().release();
  static const py::handle numpy_bool = py::module_::import("numpy").attr("bool_").cast<py::object>().release();
  static const py::handle real = py::module_::import("numbers").attr("Real").cast<py::object>().release();
  OptionValue v;
  v.repr = short_repr(value).cast<std::string>();
  using T = OptionValue::Type;
  if (value.is_none()) {
    v.type = T::none;
  } else if (py::isinstance<py::bool_>(value) || py::isinstance(value, numpy_bool)) {
    v.type = T::boolean;
    v.boolean = py::bool_(value.cast<py::object>());
  } else if (py::hasattr(value, "__index__") && !py::isinstance<py::float_>(value)) {
    v.type = T::integer;
    PyObject* index = PyNumber_Index(value.ptr());
    if (!index) throw py::error_already_set();
    const py::int_ integer = py::reinterpret_steal<py::int_>(index);
    try {
      v.integer = integer.cast<int64_t>();
    } catch (const py::cast_error&) {
      v.fits_int64 = false;
      try {
        v.unsigned_value = integer.cast<uint64_t>();
        v.fits_uint64 = true;
      } catch (const py::cast_error&) {
      }
    }
  } else if (py::isinstance(value, real)) {
    v.type = T::number;
    v.number = py::float_(value.cast<py::object>()).cast<double>();
  } else if (py::isinstance<py::str>(value)) {
    v.type = T::string;
    v.string = value.cast<std::string>();
  } else {
    v.type = T::other;
  }
  return v;
}

py::object python_default(const std::string& text) {
  static const py::handle literal_eval = py::module_::import("ast").attr("literal_eval").cast<py::object>().release();
  return literal_eval(text);
}

}  // namespace

GenerationOptions generation_options_from_dict(const py::dict& d, int64_t default_max_new_tokens) {
  std::vector<std::pair<std::string, OptionValue>> options;
  for (const auto& [key, value] : d) {
    if (!py::isinstance<py::str>(key)) throw InvalidArgument("generation option names must be strings");
    options.emplace_back(key.cast<std::string>(), option_value(value));
  }
  GenerationOptions o = parse_generation_options(options, default_max_new_tokens);
  if (!o.has_seed) o.seed = std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32);
  return o;
}

py::dict generation_options_to_dict(const GenerationOptions& o) {
  py::dict d;
  d["max_new_tokens"] = o.max_new_tokens;
  d["min_new_tokens"] = o.min_new_tokens;
  d["num_beams"] = o.num_beams;
  d["length_penalty"] = static_cast<double>(o.length_penalty);
  d["early_stopping"] = o.early_stopping == EarlyStopping::never ? py::object(py::str("never"))
                                                                 : py::object(py::bool_(o.early_stopping ==
                                                                                        EarlyStopping::on));
  d["num_return_sequences"] = o.num_return_sequences;
  d["no_repeat_ngram_size"] = o.no_repeat_ngram_size;
  d["repetition_penalty"] = static_cast<double>(o.repetition_penalty);
  d["do_sample"] = o.do_sample;
  d["temperature"] = static_cast<double>(o.temperature);
  d["top_k"] = o.top_k;
  d["top_p"] = static_cast<double>(o.top_p);
  d["seed"] = o.has_seed ? py::object(py::int_(o.seed)) : py::object(py::none());
  return d;
}

void bind_generation(py::module_& m) {
  m.def(
      "generation_options",
      [] {
        static const char* kinds[] = {"int", "float", "bool", "early_stopping", "seed"};
        py::list out;
        for (const auto& spec : generation_option_specs()) {
          py::dict d;
          d["name"] = spec.name;
          d["kind"] = kinds[static_cast<int>(spec.kind)];
          d["default"] = python_default(spec.default_value);
          if (spec.kind == OptionKind::integer) {
            d["low"] = spec.low;
            d["high"] = spec.high;
          }
          d["doc"] = spec.doc;
          out.append(d);
        }
        return out;
      },
      "The options of generate(), defined once: [{name, kind, default, low, high, doc}].");
  m.def(
      "parse_generation_options",
      [](const py::dict& options, int64_t default_max_new_tokens) {
        std::vector<std::pair<std::string, OptionValue>> parsed;
        for (const auto& [key, value] : options) {
          if (!py::isinstance<py::str>(key)) throw InvalidArgument("generation option names must be strings");
          parsed.emplace_back(key.cast<std::string>(), option_value(value));
        }
        return generation_options_to_dict(parse_generation_options(parsed, default_max_new_tokens));
      },
      py::arg("options"), py::arg("default_max_new_tokens"),
      "generate()'s keyword arguments checked: every option, defaults filled in (seed None when not given). "
      "ValueError names an unknown option or a bad value.");
}

py::tuple generation_results(const std::vector<std::vector<Hypothesis>>& results, const GenerationTimings& timings) {
  py::list out;
  for (const auto& request : results) {
    py::list hyps;
    for (const auto& h : request) hyps.append(py::make_tuple(h.tokens, h.score, h.finished));
    out.append(hyps);
  }
  py::dict t;
  t["queue_ms"] = timings.queue_ms;
  t["vision_ms"] = timings.vision_ms;
  t["encoder_ms"] = timings.encoder_ms;
  t["first_token_ms"] = timings.first_token_ms;
  t["decode_ms"] = timings.decode_ms;
  t["steps"] = timings.steps;
  return py::make_tuple(out, t);
}

}  // namespace pali::bindings
