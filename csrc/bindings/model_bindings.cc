// pali_engine._core.Model and the architecture registry, for every architecture.
//
// `load_model(file)` reads the file's `pali.config`, and the registry picks the
// architecture's model class; Python never names one. The config functions
// (`check_config`, `expected_tensors`, `config_fields`, `architectures`) are
// the registry's, so that Python's file checks use the C++ tables.
// Python does the preprocessing (image -> normalised pixels, prompt -> ids);
// this layer checks array shapes, releases the GIL for the whole computation,
// and converts results. generate() goes through the model's scheduler
// (generate/scheduler.h), started at the first call: concurrent calls from
// any number of threads are batched together, and the calling thread only
// waits (without the GIL) and runs its own token callback. submit() is the
// same call for an event loop: it returns at once with a PendingRequest, which
// start() queues, whose file descriptor becomes readable when tokens arrive or
// the request ends, so that asyncio waits for the scheduler with no thread of
// its own.
#include <fcntl.h>
#include <pybind11/stl.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/eventfd.h>
#endif

#include <cerrno>
#include <cmath>
#include <cstring>
#include <mutex>

#include "bindings/bindings.h"
#include "bindings/gil.h"
#include "core/parallel.h"
#include "core/config_table.h"
#include "generate/scheduler.h"
#include "models/architectures.h"
#include "models/dtypes.h"

namespace pali::bindings {
namespace {

Json json_from_python(const py::handle& value, int depth = 0) {
  if (depth > kMaxJsonDepth)
    throw ConfigError(str_cat("is nested too deeply (more than ", kMaxJsonDepth, " levels of lists and objects)"));
  if (value.is_none()) return Json();
  if (py::isinstance<py::bool_>(value)) return Json::boolean(value.cast<bool>());
  if (py::isinstance<py::int_>(value)) {
    try {
      return Json::integer(value.cast<int64_t>());
    } catch (const py::cast_error&) {
      // Beyond int64: kept so that a range check can name it (as the JSON reader does).
      return Json::parse(py::str(value).cast<std::string>());
    }
  }
  if (py::isinstance<py::float_>(value)) return Json::number(value.cast<double>());
  if (py::isinstance<py::str>(value)) return Json::string(value.cast<std::string>());
  if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
    Json list = Json::array();
    for (const auto& item : value) list.push(json_from_python(item, depth + 1));
    return list;
  }
  if (py::isinstance<py::dict>(value)) {
    Json object = Json::object();
    for (const auto& [key, item] : value.cast<py::dict>()) {
      if (!py::isinstance<py::str>(key)) throw ConfigError("has a key that is not a string");
      object.set(key.cast<std::string>(), json_from_python(item, depth + 1));
    }
    return object;
  }
  throw ConfigError(str_cat("holds a ", py::str(py::type::handle_of(value).attr("__name__")).cast<std::string>(),
                            ", which JSON has not"));
}

py::object json_to_python(const Json& value) {
  switch (value.type()) {
    case Json::Type::null: return py::none();
    case Json::Type::boolean: return py::bool_(value.as_bool());
    case Json::Type::integer: return py::int_(value.as_int());
    case Json::Type::number: return py::float_(value.as_double());
    case Json::Type::string: return py::str(value.as_string());
    case Json::Type::array: {
      py::list out;
      for (const auto& item : value.items()) out.append(json_to_python(item));
      return out;
    }
    case Json::Type::object: {
      py::dict out;
      for (const auto& [key, item] : value.members()) out[py::str(key)] = json_to_python(item);
      return out;
    }
  }
  return py::none();
}

// A config given as JSON text (as the file holds it) or as a dict.
Json config_argument(const py::object& config) {
  if (py::isinstance<py::str>(config)) return Json::parse(config.cast<std::string>());
  return json_from_python(config);
}

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// The model and the thread count its calls use.
// The model's scheduler, started by the first generate().
struct SchedulerSlot {
  std::mutex mutex;
  std::unique_ptr<Scheduler> scheduler;
};

struct LoadedModel {
  std::shared_ptr<const Model> model;
  int threads = 0;
  SchedulerLimits limits;
  std::shared_ptr<SchedulerSlot> slot = std::make_shared<SchedulerSlot>();  // after model: stopped before it goes

  Scheduler& scheduler() const {
    std::lock_guard<std::mutex> lock(slot->mutex);
    if (!slot->scheduler) slot->scheduler = std::make_unique<Scheduler>(*model, threads, limits);
    return *slot->scheduler;
  }
};

template <typename T>
std::vector<T> copied(const T* data, int64_t n) {
  return std::vector<T>(data, data + n);
}

F32Array checked_pixels(const Model& model, const py::array& pixel_values) {
  auto pixels = F32Array::ensure(pixel_values);
  if (!pixels) throw InvalidArgument("pixel_values must be a numeric array");
  const int64_t s = model.image_size(), c = model.num_channels();
  PALI_CHECK_ARG(pixels.ndim() == 4 && pixels.shape(0) > 0 && pixels.shape(1) == c && pixels.shape(2) == s &&
                     pixels.shape(3) == s,
                 "pixel_values must be [batch, ", c, ", ", s, ", ", s, "]");
  return pixels;
}

I64Array checked_ids(const py::array& array, const std::string& name, int64_t batch) {
  auto ids = I64Array::ensure(array);
  if (!ids) throw InvalidArgument(str_cat(name, " must be a numeric array"));
  PALI_CHECK_ARG(ids.ndim() == 2 && ids.shape(0) == batch, name, " must be [batch, length] with the batch (", batch,
                 ") of pixel_values");
  return ids;
}

OwnedPrompts owned_prompts(const Model& model, const py::array& pixel_values, const py::array& input_ids,
                           const py::array& attention_mask) {
  F32Array pixels = checked_pixels(model, pixel_values);
  const int64_t batch = pixels.shape(0);
  I64Array ids = checked_ids(input_ids, "input_ids", batch);
  I64Array mask = checked_ids(attention_mask, "attention_mask", batch);
  PALI_CHECK_ARG(mask.shape(1) == ids.shape(1), "attention_mask must have the shape of input_ids");
  OwnedPrompts prompts;
  prompts.batch = batch;
  prompts.length = ids.shape(1);
  prompts.pixels = copied(pixels.data(), pixels.size());
  prompts.input_ids = copied(ids.data(), ids.size());
  prompts.attention_mask = copied(mask.data(), mask.size());
  return prompts;
}

// A descriptor that becomes readable when signalled: an eventfd on Linux, a
// pipe elsewhere. Shared by the request's notifier and its PendingRequest, so
// it stays open until both are gone.
class ReadySignal {
 public:
  ReadySignal() {
#if defined(__linux__)
    read_fd_ = write_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (read_fd_ < 0) throw RuntimeFailure(str_cat("eventfd: ", std::strerror(errno)));
#else
    int fds[2];
    if (::pipe(fds) != 0) throw RuntimeFailure(str_cat("pipe: ", std::strerror(errno)));
    for (int fd : fds) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    read_fd_ = fds[0];
    write_fd_ = fds[1];
#endif
  }
  ~ReadySignal() {
    ::close(read_fd_);
    if (write_fd_ != read_fd_) ::close(write_fd_);
  }
  ReadySignal(const ReadySignal&) = delete;
  ReadySignal& operator=(const ReadySignal&) = delete;

  int fd() const { return read_fd_; }
  void signal() const {
#if defined(__linux__)
    const uint64_t one = 1;
    (void)!::write(write_fd_, &one, sizeof one);
#else
    const char one = 1;
    (void)!::write(write_fd_, &one, 1);  // a full pipe is signalled already
#endif
  }
  void clear() const {
    char buffer[64];
    while (::read(read_fd_, buffer, sizeof buffer) > 0) {
    }
  }

 private:
  int read_fd_ = -1, write_fd_ = -1;
};

// A request made by Model.submit and queued by start(): polled by its caller, never waited on.
// Queueing is a call of its own so that the caller can watch fileno() first: once the request is
// queued the scheduler computes at once, and a caller still busy on a core then would take it
// from the scheduler's threads.
struct PendingRequest {
  std::shared_ptr<ScheduledRequest> request;  // null until start()
  std::shared_ptr<ReadySignal> ready;
  // Until start(): what it queues.
  OwnedPrompts prompts;
  GenerationOptions options;
  bool stream = false;
  bool cancelled_before_start = false;
  // The scheduler and its model stay while a request is held (the slot goes first: it stops the scheduler).
  std::shared_ptr<const Model> model;
  std::shared_ptr<SchedulerSlot> slot;
};

}  // namespace

void bind_models(py::module_& m) {
  py::class_<PendingRequest>(m, "PendingRequest", py::module_local(),
                             "A request for the model's scheduler (Model.submit), for an event loop: start() "
                             "queues it; fileno() becomes readable when it has new tokens or has ended; poll() "
                             "takes them.")
      .def("fileno", [](const PendingRequest& self) { return self.ready->fd(); })
      .def(
          "start",
          [](PendingRequest& self) {
            PALI_CHECK_ARG(!self.request, "the request was started already");
            if (self.cancelled_before_start) {
              self.ready->signal();
              return;
            }
            std::shared_ptr<const ReadySignal> ready = self.ready;
            Scheduler* scheduler;
            {
              std::lock_guard<std::mutex> lock(self.slot->mutex);
              scheduler = self.slot->scheduler.get();  // started by submit()
            }
            self.request = scheduler->submit(std::move(self.prompts), self.options, self.stream,
                                             [ready] { ready->signal(); });
          },
          "Queues the request on the scheduler (EngineBusy when max_queue requests are already waiting).")
      .def(
          "poll",
          [](const PendingRequest& self) {
            self.ready->clear();
            std::vector<std::pair<int64_t, int64_t>> tokens;
            if (!self.request) return py::make_tuple(py::cast(tokens), self.cancelled_before_start);
            const bool ended = self.request->poll_tokens(&tokens);
            return py::make_tuple(py::cast(tokens), ended);
          },
          "([(prompt, token), ...] chosen since the last poll, whether the request has ended); clears fileno().")
      .def(
          "result",
          [](const PendingRequest& self) {
            PALI_CHECK_ARG(self.request, "the request was not started");
            GenerationTimings timings;
            std::vector<std::vector<Hypothesis>> results =
                without_gil([&] { return self.request->wait(&timings); });
            return generation_results(results, timings);
          },
          "What generate() returns; waits for the end (call it once poll() said the request has ended), or "
          "raises the request's error.")
      .def(
          "cancel",
          [](PendingRequest& self) {
            if (self.request)
              self.request->cancel();
            else
              self.cancelled_before_start = true;
          },
          "Stops the request at its next step; it then ends with what it generated so far.")
      .def(
          "stop",
          [](const PendingRequest& self, int64_t prompt, int64_t kept) {
            if (self.request) self.request->stop(prompt, kept);
          },
          py::arg("prompt"), py::arg("kept"),
          "Stops one prompt's rows after the `kept` tokens its consumer took (generate's on_token returning "
          "False).");

  m.def(
      "parse_json", [](const std::string& text) { return json_to_python(Json::parse(text)); }, py::arg("text"),
      "Reads JSON text with the engine's strict reader (the one that reads `pali.config`); ValueError says "
      "what is wrong and where.");
  m.def(
      "architectures",
      [] {
        py::list out;
        for (const auto& a : architectures()) out.append(py::make_tuple(a.name, a.description));
        return out;
      },
      "The architectures this build reads: [(name, description)].");
  m.def(
      "check_config",
      [](const py::object& config) {
        const Json json = config_argument(config);
        return json_to_python(architecture_of(json).check_config(json));
      },
      py::arg("config"),
      "A `pali.config` (JSON text or dict) checked by its architecture's field table: every field, defaults "
      "filled in, unknown fields dropped. ValueError says what is wrong, naming the field.");
  m.def(
      "expected_tensors",
      [](const py::object& config) {
        const Json json = config_argument(config);
        py::list out;
        for (const auto& t : architecture_of(json).expected_tensors(json))
          out.append(py::make_tuple(t.name, py::tuple(py::cast(t.shape))));
        return out;
      },
      py::arg("config"),
      "The tensors a file of this config must hold: [(name, shape)], in the order the model reads them "
      "(each in float32, float16 or bfloat16).");
  m.def(
      "config_fields",
      [](const std::string& architecture) {
        for (const auto& a : architectures())
          if (a.name == architecture) return json_to_python(a.config_fields());
        throw InvalidArgument(str_cat("unknown architecture '", architecture, "'"));
      },
      py::arg("architecture"),
      "The architecture's config table: [{name, kind, required, default, low, high, positive, choices, "
      "fields (a section's)}].");

  py::class_<LoadedModel>(m, "Model", py::module_local(), "A model of any architecture on the engine's own kernels.")
      .def_property_readonly("architecture", [](const LoadedModel& self) { return self.model->architecture(); })
      .def_property_readonly("config", [](const LoadedModel& self) { return json_to_python(self.model->config_json()); })
      .def_property_readonly("weight_format",
                             [](const LoadedModel& self) { return weight_format_name(self.model->format()); })
      .def_property_readonly("vocab_size", [](const LoadedModel& self) { return self.model->vocab_size(); })
      .def_property_readonly("forward_inputs", [](const LoadedModel& self) { return self.model->forward_inputs(); })
      .def(
          "forward",
          [](const LoadedModel& self, const py::array& pixel_values, const py::args& arrays) {
            const Model& model = *self.model;
            const std::vector<std::string> names = model.forward_inputs();
            PALI_CHECK_ARG(arrays.size() == names.size(), "forward takes pixel_values and ", names.size(),
                           " integer arrays, got ", arrays.size());
            F32Array pixels = checked_pixels(model, pixel_values);
            const int64_t batch = pixels.shape(0);
            std::vector<I64Array> inputs;
            std::vector<const int64_t*> data;
            std::vector<int64_t> lengths;
            for (size_t i = 0; i < names.size(); ++i) {
              inputs.push_back(checked_ids(arrays[i].cast<py::array>(), names[i], batch));
              data.push_back(inputs.back().data());
              lengths.push_back(inputs.back().shape(1));
            }
            const int64_t length = model.logits_length(lengths);
            py::array_t<float> logits({batch, length, model.vocab_size()});
            float* out = logits.mutable_data();
            without_gil([&] {
              ScopedOpThreads scoped(self.threads);
              model.forward(pixels.data(), batch, data, lengths, out);
            });
            return logits;
          },
          py::arg("pixel_values"),
          "Teacher-forced logits float32[B, T, V], as the ONNX graph computes them; the integer inputs are "
          "`forward_inputs`, in order.")
      .def(
          "generate",
          [](const LoadedModel& self, const py::array& pixel_values, const py::array& input_ids,
             const py::array& attention_mask, const py::dict& options, const py::object& on_token) {
            OwnedPrompts prompts = owned_prompts(*self.model, pixel_values, input_ids, attention_mask);
            const int64_t batch = prompts.batch;
            GenerationOptions opts = generation_options_from_dict(options);
            Scheduler& scheduler = self.scheduler();
            std::shared_ptr<ScheduledRequest> request =
                scheduler.submit(std::move(prompts), opts, /*stream=*/!on_token.is_none());
            if (!on_token.is_none()) {
              // Returning false stops that prompt's rows; an exception stops the request and is re-raised.
              std::vector<std::pair<int64_t, int64_t>> chosen;
              std::vector<int64_t> delivered(batch, 0);
              bool more = true;
              while (more) {
                chosen.clear();
                more = without_gil([&] { return request->take_tokens(&chosen); });
                for (const auto& [prompt, token] : chosen) {
                  if (request->cancelled() || request->stopped(prompt)) continue;
                  try {
                    py::object answer = on_token(prompt, token);
                    ++delivered[prompt];
                    if (!(answer.is_none() || answer.cast<bool>())) request->stop(prompt, delivered[prompt]);
                  } catch (...) {
                    request->cancel();
                    without_gil([&] {
                      try {
                        request->wait(nullptr);
                      } catch (...) {
                      }
                    });
                    throw;
                  }
                }
              }
            }
            GenerationTimings timings;
            std::vector<std::vector<Hypothesis>> results = without_gil([&] { return request->wait(&timings); });
            return generation_results(results, timings);
          },
          py::arg("pixel_values"), py::arg("input_ids"), py::arg("attention_mask"), py::arg("options"),
          py::arg("on_token") = py::none(),
          "Generates for a batch of prompts: ([[ (tokens, score, finished), ... ] per request], timings). "
          "Concurrent calls run batched together on the model's scheduler; on_token(prompt, token) is called "
          "in the calling thread as tokens are chosen (returning False stops that prompt). RuntimeError "
          "(pali_engine.errors.EngineBusy) when max_queue requests are already waiting.")
      .def(
          "submit",
          [](const LoadedModel& self, const py::array& pixel_values, const py::array& input_ids,
             const py::array& attention_mask, const py::dict& options, bool stream) {
            PendingRequest pending;
            pending.prompts = owned_prompts(*self.model, pixel_values, input_ids, attention_mask);
            pending.options = generation_options_from_dict(options);
            pending.options.validate();
            pending.stream = stream;
            pending.ready = std::make_shared<ReadySignal>();
            pending.model = self.model;
            pending.slot = self.slot;
            self.scheduler();  // started now, so that start() only queues
            return pending;
          },
          py::arg("pixel_values"), py::arg("input_ids"), py::arg("attention_mask"), py::arg("options"),
          py::arg("stream") = false,
          "generate() without waiting: a PendingRequest for the inputs, checked, that start() queues on the "
          "model's scheduler (stream: its tokens are kept for poll() as they are chosen).")
      .def(
          "scheduler_stats",
          [](const LoadedModel& self) {
            py::dict out;
            SchedulerStats stats;
            if (self.slot->scheduler) stats = self.scheduler().stats();
            out["active_requests"] = stats.active_requests;
            out["queued_requests"] = stats.queued_requests;
            out["active_rows"] = stats.active_rows;
            out["steps"] = stats.steps;
            out["joined_requests"] = stats.joined_requests;
            out["prefills"] = stats.prefills;
            out["prefill_ms"] = stats.prefill_ms;
            out["decode_ms"] = stats.decode_ms;
            out["max_batch"] = self.limits.max_batch_rows;
            out["max_queue"] = self.limits.max_queued;
            return out;
          },
          "The scheduler's requests running and waiting, rows stepped together, steps so far, requests that "
          "joined others already generating, prefill batches run, the milliseconds of its prefill thread in "
          "prefills and of its decode thread in steps, and its limits.");

  m.def(
      "engine_dtypes",
      [] {
        std::vector<std::tuple<std::string, std::string, std::string>> out;
        for (const auto& d : engine_dtypes()) out.emplace_back(d.name, weight_format_name(d.format), d.doc);
        return out;
      },
      "The engine's dtypes, the default first: (name, weight format of the linear layers, what it means).");

  m.def(
      "default_engine_dtype",
      [](const std::optional<std::string>& weights_dtype) {
        return std::string(default_engine_dtype(weights_dtype ? &*weights_dtype : nullptr).name);
      },
      py::arg("weights_dtype"),
      "The dtype a model loads in when none is asked for, from its file's 'pali.weights_dtype' (or None): "
      "the file's own when it is quantized, else float32.");

  m.def(
      "load_model",
      [](const std::shared_ptr<onnx::OnnxFile>& file, const std::string& weight_format, int threads,
         const py::object& config, int64_t max_batch, int64_t max_queue) {
        WeightFormat format = weight_format_from_name(weight_format);
        PALI_CHECK_ARG(threads >= 0, "threads must be >= 0 (0: all cores), got ", threads);
        PALI_CHECK_ARG(max_batch >= 1, "max_batch must be >= 1, got ", max_batch);
        PALI_CHECK_ARG(max_queue >= 0, "max_queue must be >= 0, got ", max_queue);
        LoadedModel loaded;
        loaded.threads = threads;
        loaded.limits.max_batch_rows = max_batch;
        loaded.limits.max_queued = max_queue;
        // The config argument is converted with the GIL; the weights are prepared without it.
        Json json;
        const bool from_file = config.is_none();
        if (!from_file) json = config_argument(config);
        loaded.model = without_gil([&] {
          ScopedOpThreads scoped(threads);
          if (from_file) return load_model(file, format);
          try {
            return architecture_of(json).load(file, json, format);
          } catch (const ModelFileError&) {
            throw;
          } catch (const InvalidArgument& error) {
            throw ModelFileError(str_cat(file->path(), ": 'pali.config' ", error.what()));
          }
        });
        return loaded;
      },
      py::arg("file"), py::arg("weight_format") = "f32", py::arg("threads") = 0, py::arg("config") = py::none(),
      py::arg("max_batch") = SchedulerLimits().max_batch_rows, py::arg("max_queue") = SchedulerLimits().max_queued,
      "The file's model, its architecture picked by its `pali.config` (or by `config`, a dict or JSON text, "
      "when given). ModelFileError names the file and the field or tensor. max_batch: the rows (prompts x "
      "beams or samples) its scheduler steps together; max_queue: the requests that may wait.");
}

}  // namespace pali::bindings
