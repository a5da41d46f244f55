// pali_engine::Engine: a model file loaded and checked as the Python package
// loads it (Engine.load and its backends), and generation with the Python
// Backend's steps around the model: options parsed by the engine's one option
// table, prompts and images to arrays by the architecture's processor, the
// search, and results decoded and read for objects.
//
// Every engine exception leaves as a pali_engine::Error of the matching kind
// with the engine's message; an exception thrown by a caller's callback
// leaves unchanged, after the search has stopped.
#include <sys/stat.h>

#include <chrono>
#include <exception>
#include <random>

#include "api/answers.h"
#include "api/image.h"
#include "api/python_format.h"
#include "api/text.h"
#include "api/translate.h"
#include "core/error.h"
#include "core/json.h"
#include "core/parallel.h"
#include "generate/generation_options.h"
#include "models/architectures.h"
#include "models/dtypes.h"
#include "onnx/onnx_file.h"
#include "pali_engine/pali_engine.hpp"

#ifndef PALI_ENGINE_VERSION
#define PALI_ENGINE_VERSION "unknown"
#endif

namespace pali_engine {
namespace {

using Clock = std::chrono::steady_clock;
using pali::str_cat;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

using pali::api::translated;

// ------------------------------------------------------------- options

pali::OptionValue engine_value(const OptionValue& value) {
  using T = pali::OptionValue::Type;
  pali::OptionValue out;
  if (std::holds_alternative<std::monostate>(value)) {
    out.type = T::none;
    out.repr = "None";
  } else if (const bool* b = std::get_if<bool>(&value)) {
    out.type = T::boolean;
    out.boolean = *b;
    out.repr = *b ? "True" : "False";
  } else if (const int64_t* i = std::get_if<int64_t>(&value)) {
    out.type = T::integer;
    out.integer = *i;
    out.repr = std::to_string(*i);
  } else if (const uint64_t* u = std::get_if<uint64_t>(&value)) {
    out.type = T::integer;
    out.repr = std::to_string(*u);
    if (*u <= static_cast<uint64_t>(INT64_MAX)) {
      out.integer = static_cast<int64_t>(*u);
    } else {
      out.fits_int64 = false;
      out.fits_uint64 = true;
      out.unsigned_value = *u;
    }
  } else if (const double* d = std::get_if<double>(&value)) {
    out.type = T::number;
    out.number = *d;
    out.repr = pali::api::py_float_repr(*d);
  } else {
    out.type = T::string;
    out.string = std::get<std::string>(value);
    out.repr = pali::api::py_short_repr(out.string);
  }
  return out;
}

// The options as Python's keyword arguments would give them: the fields set, then those set by name.
std::vector<std::pair<std::string, pali::OptionValue>> option_list(const GenerateOptions& o) {
  std::vector<std::pair<std::string, pali::OptionValue>> out;
  const auto by_name = [&](const std::string& name) {
    for (const auto& entry : o.by_name())
      if (entry.first == name) return true;
    return false;
  };
  const auto add = [&](const char* name, const auto& field) {
    if (field && !by_name(name)) out.emplace_back(name, engine_value(OptionValue(*field)));
  };
  add("max_new_tokens", o.max_new_tokens);
  add("min_new_tokens", o.min_new_tokens);
  add("num_beams", o.num_beams);
  add("length_penalty", o.length_penalty);
  if (o.early_stopping && !by_name("early_stopping")) {
    const EarlyStopping e = *o.early_stopping;
    out.emplace_back("early_stopping", engine_value(e == EarlyStopping::never ? OptionValue(std::string("never"))
                                                                              : OptionValue(e == EarlyStopping::on)));
  }
  add("num_return_sequences", o.num_return_sequences);
  add("no_repeat_ngram_size", o.no_repeat_ngram_size);
  add("repetition_penalty", o.repetition_penalty);
  add("do_sample", o.do_sample);
  add("temperature", o.temperature);
  add("top_k", o.top_k);
  add("top_p", o.top_p);
  add("seed", o.seed);
  for (const auto& [name, value] : o.by_name()) out.emplace_back(name, engine_value(value));
  return out;
}

pali::GenerationOptions parse_options(const GenerateOptions& options, int64_t default_max_new_tokens) {
  pali::GenerationOptions parsed = pali::parse_generation_options(option_list(options), default_max_new_tokens);
  if (!parsed.has_seed)
    parsed.seed = std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32);
  return parsed;
}

// ------------------------------------------------------------- config

const pali::Json& member(const pali::Json& config, const char* name) {
  const pali::Json* value = config.find(name);
  PALI_CHECK(value != nullptr, "the normalised config lacks '", name, "'");
  return *value;
}

std::vector<float> floats(const pali::Json& list) {
  std::vector<float> out;
  for (const auto& item : list.items()) out.push_back(static_cast<float>(item.as_double()));
  return out;
}

std::string shape_text(const pali::Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// model_spec.check_tensors: the file's tensors against the ones its config implies.
void check_tensors(const std::string& path, const pali::onnx::OnnxFile& file,
                   const std::vector<pali::TensorSpec>& expected) {
  const auto& tensors = file.initializers();
  const auto more = [](size_t count) { return count > 1 ? str_cat(" (and ", count - 1, " more)") : std::string(); };
  std::vector<std::string> missing;
  for (const auto& spec : expected)
    if (!file.has_tensor(spec.name)) missing.push_back(spec.name);
  if (!missing.empty())
    throw pali::ModelFileError(str_cat(path, ": tensor ", pali::api::py_str_repr(missing[0]), " is missing",
                                       more(missing.size()), "; the config implies ", expected.size(),
                                       " parameters and the file has ", tensors.size(), " tensors"));
  for (const auto& spec : expected) {
    const auto& info = file.info(spec.name);
    if (info.shape != spec.shape)
      throw pali::ModelFileError(str_cat(path, ": tensor ", pali::api::py_str_repr(spec.name), " has shape ",
                                         shape_text(info.shape), " but the config implies ", shape_text(spec.shape)));
    const std::string dtype = file.dtype_label(spec.name);
    if (dtype != "float32" && dtype != "float16" && dtype != "bfloat16" && dtype != "int8" && dtype != "int4")
      throw pali::ModelFileError(str_cat(path, ": tensor ", pali::api::py_str_repr(spec.name), " has dtype ", dtype,
                                         "; expected one of ('float32', 'float16', 'bfloat16', 'int8', 'int4')"));
  }
  // A quantized weight's scales ("<name>_scale") belong to it.
  const auto quantized = [&](const std::string& name) {
    const std::string dtype = file.dtype_label(name);
    return dtype == "int8" || dtype == "int4";
  };
  std::vector<std::string> unused;
  for (const auto& tensor : tensors) {
    bool known = false;
    for (const auto& spec : expected)
      known |= spec.name == tensor.name || (tensor.name == spec.name + "_scale" && quantized(spec.name));
    if (!known) unused.push_back(tensor.name);
  }
  if (!unused.empty())
    throw pali::ModelFileError(str_cat(path, ": tensor ", pali::api::py_str_repr(unused[0]), more(unused.size()),
                                       " is not a parameter of the model its config describes (unused)"));
}

// backends.file_architecture: the architecture pali.config names, "pali" when it names none or cannot be read.
std::string file_architecture(const std::string& path, const pali::onnx::OnnxFile& file) {
  const std::string* text = file.find_metadata("pali.config");
  if (!text) return "pali";
  pali::Json config;
  try {
    config = pali::Json::parse(*text);
  } catch (const pali::JsonError&) {
    return "pali";
  }
  const pali::Json* name = config.type() == pali::Json::Type::object ? config.find("architecture") : nullptr;
  if (!name || name->type() != pali::Json::Type::string) return "pali";
  std::string known;
  for (const auto& a : pali::architectures()) {
    if (a.name == name->as_string()) return a.name;
    known += (known.empty() ? "" : ", ") + a.name;
  }
  throw pali::ModelFileError(str_cat(path, ": 'pali.config' names the architecture ",
                                     pali::api::py_short_repr(name->as_string()), "; this pali-engine reads ", known));
}

// model_spec.parse_metadata: the checked config (normalised) and the tokenizer's bytes.
std::pair<pali::Json, std::string> parse_metadata(const std::string& path, const pali::onnx::OnnxFile& file) {
  const std::string* format = file.find_metadata("pali.format");
  const std::string* text = file.find_metadata("pali.config");
  if (!format && !text)
    throw pali::ModelFileError(str_cat(path, ": no pali metadata ('pali.format', 'pali.config'); not a pali-engine "
                                       "model (write one with: pali-engine export CHECKPOINT -o NAME.onnx)"));
  if (!format) throw pali::ModelFileError(str_cat(path, ": no 'pali.format' metadata; not a pali-engine model"));
  if (*format != "1")
    throw pali::ModelFileError(str_cat(path, ": unsupported 'pali.format' version ", pali::api::py_str_repr(*format),
                                       "; this pali-engine reads version 1 (a newer pali-engine may read it)"));
  if (!text) throw pali::ModelFileError(str_cat(path, ": no 'pali.config' metadata; not a pali-engine model"));
  pali::Json config;
  try {
    const pali::Json raw = pali::Json::parse(*text);
    config = pali::architecture_of(raw).check_config(raw);
  } catch (const pali::InvalidArgument& error) {
    throw pali::ModelFileError(str_cat(path, ": 'pali.config' ", error.what()));
  }
  const std::string* encoded = file.find_metadata("pali.tokenizer");
  if (!encoded || encoded->empty())
    throw pali::ModelFileError(str_cat(path, ": no 'pali.tokenizer' metadata; the file carries no tokenizer"));
  try {
    return {config, pali::api::decode_base64(*encoded)};
  } catch (const pali::InvalidArgument& error) {
    throw pali::ModelFileError(str_cat(path, ": 'pali.tokenizer' metadata is not valid base64: ", error.what()));
  }
}

// The public enum's order is the table's (models/dtypes.h).
const pali::EngineDtype& engine_dtype_of(Dtype dtype) { return pali::engine_dtypes().at(static_cast<size_t>(dtype)); }

pali::WeightFormat weight_format(Dtype dtype) { return engine_dtype_of(dtype).format; }

constexpr int kMaxThreads = 4096;  // backend.MAX_THREADS

}  // namespace

// ------------------------------------------------------------- the engine

struct Engine::Impl {
  std::string path, architecture;
  Dtype dtype = Dtype::float32;
  int threads = 0;
  Resize resize = Resize::pad;
  std::shared_ptr<const pali::Model> model;
  pali::Json config;
  std::unique_ptr<pali::api::Tokenizer> tokenizer;
  int64_t pad_id = 0, eos_id = 1, max_new_tokens = 0;
  int image_size = 0;
  Resample resample = Resample::bilinear;
  std::vector<float> mean, std;
  double rescale_factor = 1.0 / 255;
  pali::api::PaliPromptLayout pali_layout;
  pali::api::PaliGemmaPromptLayout paligemma_layout;

  bool paligemma() const { return architecture == "paligemma"; }

  pali::api::EncodedPrompts encode(const std::vector<std::string>& prompts) const {
    return paligemma() ? pali::api::encode_paligemma_prompts(*tokenizer, prompts, paligemma_layout)
                       : pali::api::encode_pali_prompts(*tokenizer, prompts, pali_layout);
  }

  // Backend.pixel_values / PaliGemmaProcessor.preprocess_image of one image, appended to `out`.
  void append_pixels(const Image& image, std::vector<float>& out) const {
    if (!paligemma()) {
      const std::vector<float> x = preprocess(image, image_size, mean, std, resample, resize);
      out.insert(out.end(), x.begin(), x.end());
      return;
    }
    const pali::api::RgbImage rgb = pali::api::rgb_for_siglip(image.pixels());
    const pali::api::RgbImage resized = pali::api::pil_resize(rgb, image_size, image_size, resample);
    const size_t plane = static_cast<size_t>(image_size) * image_size;
    const size_t base = out.size();
    out.resize(base + 3 * plane);
    for (int c = 0; c < 3; ++c)
      for (size_t i = 0; i < plane; ++i) {
        float x = static_cast<float>(resized.rgb[3 * i + c] * rescale_factor);
        x = (x - mean[c]) / std[c];
        out[base + c * plane + i] = x;
      }
  }

  Result result(const pali::Hypothesis& hypothesis, const Image& image, const Timings& timings) const {
    Result r;
    r.tokens = hypothesis.tokens;
    if (hypothesis.finished) r.tokens.push_back(eos_id);
    r.text = tokenizer->decode(r.tokens, pad_id, eos_id);
    r.score = static_cast<double>(hypothesis.score);
    r.finished = hypothesis.finished;
    r.timings = timings;
    r.image_width = image.width();
    r.image_height = image.height();
    r.objects = objects(r.text, r.image_width, r.image_height);
    return r;
  }

  std::vector<Object> objects(const std::string& text, int width, int height) const {
    return paligemma() ? pali::api::parse_segmentation(text, width, height)
                       : pali::api::parse_detections(text, width, height, resize);
  }

  // Backend.generate's checks in its order: the options, then the lists (as_batch).
  pali::GenerationOptions checked(const GenerateOptions& options, const std::vector<Image>& images,
                                  const std::vector<std::string>& prompts, bool one_sequence) const {
    const pali::GenerationOptions parsed = parse_options(options, max_new_tokens);
    PALI_CHECK_ARG(!one_sequence || parsed.num_return_sequences == 1,
                   "generate returns one result per input; num_return_sequences must be 1 (generate_sequences "
                   "returns them all)");
    PALI_CHECK_ARG(images.size() == prompts.size(), "got ", images.size(), " images and ", prompts.size(),
                   " prompts; give one prompt per image");
    PALI_CHECK_ARG(!images.empty(), "empty list of images and prompts");
    return parsed;
  }

  // Backend.generate: the search over a batch, results per input.
  std::vector<std::vector<Result>> run(const std::vector<Image>& images, const std::vector<std::string>& prompts,
                                       const pali::GenerationOptions& options, Clock::time_point start,
                                       const pali::TokenCallback& on_token) const {
    const pali::api::EncodedPrompts encoded = encode(prompts);
    std::vector<float> pixels;
    pixels.reserve(images.size() * 3 * static_cast<size_t>(image_size) * image_size);
    for (const Image& image : images) append_pixels(image, pixels);
    const auto prepared = Clock::now();
    pali::PromptBatch batch{pixels.data(), encoded.input_ids.data(), encoded.attention_mask.data(), encoded.batch,
                            encoded.length};
    pali::GenerationTimings search;
    std::vector<std::vector<pali::Hypothesis>> hypotheses;
    {
      pali::ScopedOpThreads scoped(threads);
      hypotheses = model->generate(batch, options, on_token, &search);
    }
    const auto done = Clock::now();
    Timings timings;
    timings.preprocess_ms = ms_between(start, prepared);
    timings.vision_ms = search.vision_ms;
    timings.encoder_ms = search.encoder_ms;
    timings.first_token_ms = search.first_token_ms;
    timings.decode_ms = search.decode_ms;
    timings.steps = search.steps;
    timings.generate_ms = ms_between(prepared, done);
    timings.total_ms = ms_between(start, done);
    std::vector<std::vector<Result>> results(hypotheses.size());
    for (size_t i = 0; i < hypotheses.size(); ++i)
      for (const auto& h : hypotheses[i]) results[i].push_back(result(h, images[i], timings));
    return results;
  }
};

Engine Engine::load(const std::string& path, const LoadOptions& options) {
  return translated([&] {
    auto impl = std::make_shared<Impl>();
    impl->path = path;
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode))
      throw pali::ModelFileError(str_cat(path, ": no such model file"));
    // Open for the load only: the model keeps what it needs of the file.
    const std::shared_ptr<const pali::onnx::OnnxFile> file = pali::onnx::OnnxFile::open(path);
    impl->architecture = file_architecture(path, *file);
    impl->dtype = options.dtype ? *options.dtype
                                : dtype_from_name(pali::default_engine_dtype(file->find_metadata("pali.weights_dtype")).name);
    const bool paligemma = impl->paligemma();
    if (paligemma && options.resize == Resize::pad)
      throw pali::InvalidArgument(str_cat("a 'paligemma' model takes resize='stretch', as it was trained; got 'pad'"));
    impl->resize = options.resize != Resize::model_default ? options.resize
                   : paligemma                             ? Resize::stretch
                                                           : Resize::pad;
    if (options.threads < 0 || options.threads > kMaxThreads)
      throw pali::InvalidArgument(str_cat("threads must be an integer between 1 and ", kMaxThreads,
                                          ", or None for all cores, got ", options.threads));
    impl->threads = options.threads;

    auto [config, tokenizer_bytes] = parse_metadata(path, *file);
    const pali::Architecture& architecture = pali::architecture_of(config);
    std::vector<pali::TensorSpec> expected;
    try {
      expected = architecture.expected_tensors(config);
    } catch (const pali::InvalidArgument& error) {
      throw pali::ModelFileError(str_cat(path, ": 'pali.config' ", error.what()));
    }
    check_tensors(path, *file, expected);
    impl->config = config;

    impl->image_size = static_cast<int>(member(config, "image_size").as_int());
    impl->mean = floats(member(config, "image_mean"));
    impl->std = floats(member(config, "image_std"));
    impl->max_new_tokens = member(config, "max_new_tokens").as_int();
    if (paligemma) {
      try {
        impl->tokenizer = std::make_unique<pali::api::Tokenizer>(tokenizer_bytes);
        impl->resample = pali::api::resample_from_name(member(config, "resample").as_string());
      } catch (const pali::InvalidArgument& error) {
        throw pali::ModelFileError(str_cat(path, ": the tokenizer or image settings are unusable: ", error.what()));
      }
      impl->rescale_factor = member(config, "rescale_factor").as_double();
      impl->paligemma_layout.image_token_index = member(config, "image_token_index").as_int();
      impl->paligemma_layout.num_image_tokens = member(config, "num_image_tokens").as_int();
      impl->pad_id = impl->tokenizer->pad_id();
      impl->eos_id = impl->tokenizer->eos_id();
    } else {
      try {
        impl->tokenizer = std::make_unique<pali::api::Tokenizer>(tokenizer_bytes);
      } catch (const pali::InvalidArgument& error) {
        throw pali::ModelFileError(str_cat(path, ": 'pali.tokenizer' is not a SentencePiece model: ", error.what()));
      }
      const int64_t vocab = member(config, "vocab_size").as_int();
      if (impl->tokenizer->piece_count() > vocab)
        throw pali::ModelFileError(str_cat(path, ": 'pali.tokenizer' has ", impl->tokenizer->piece_count(),
                                           " pieces, more than the config's vocab_size (", vocab, ")"));
      const pali::Json* resample = config.find("resample");
      impl->resample = pali::api::resample_from_name(resample ? resample->as_string() : "bilinear");
      impl->pad_id = member(config, "pad_token_id").as_int();
      impl->eos_id = member(config, "eos_token_id").as_int();
      impl->pali_layout = {impl->pad_id, impl->eos_id, member(config, "max_prompt_tokens").as_int()};
    }

    pali::ScopedOpThreads scoped(impl->threads);
    try {
      impl->model = architecture.load(file, config, weight_format(impl->dtype));
    } catch (const pali::ModelFileError&) {
      throw;
    } catch (const pali::InvalidArgument& error) {
      throw pali::ModelFileError(paligemma ? str_cat(path, ": ", error.what())
                                           : str_cat(path, ": the native engine refuses 'pali.config': ", error.what()));
    }
    return Engine(std::move(impl));
  });
}

const std::string& Engine::path() const { return impl_->path; }
const std::string& Engine::architecture() const { return impl_->architecture; }
std::string Engine::config_json() const { return impl_->config.dump(); }
Dtype Engine::dtype() const { return impl_->dtype; }
Resize Engine::resize() const { return impl_->resize; }
int Engine::image_size() const { return impl_->image_size; }
int64_t Engine::vocab_size() const { return impl_->model->vocab_size(); }
int64_t Engine::default_max_new_tokens() const { return impl_->max_new_tokens; }

std::vector<std::vector<Result>> Engine::generate_sequences(const std::vector<Image>& images,
                                                            const std::vector<std::string>& prompts,
                                                            const GenerateOptions& options) const {
  return translated([&] {
    const auto start = Clock::now();
    return impl_->run(images, prompts, impl_->checked(options, images, prompts, false), start, {});
  });
}

std::vector<Result> Engine::generate(const std::vector<Image>& images, const std::vector<std::string>& prompts,
                                     const GenerateOptions& options) const {
  return translated([&] {
    const auto start = Clock::now();
    std::vector<Result> out;
    for (auto& per_input : impl_->run(images, prompts, impl_->checked(options, images, prompts, true), start, {}))
      out.push_back(std::move(per_input.front()));
    return out;
  });
}

Result Engine::generate(const Image& image, const std::string& prompt, const GenerateOptions& options) const {
  return std::move(generate(std::vector<Image>{image}, std::vector<std::string>{prompt}, options).front());
}

Result Engine::stream(const Image& image, const std::string& prompt, const GenerateOptions& options,
                      const TextCallback& on_text_piece) const {
  std::exception_ptr callback_error;
  Result out = translated([&] {
    const auto start = Clock::now();
    const pali::GenerationOptions parsed = parse_options(options, impl_->max_new_tokens);
    PALI_CHECK_ARG(parsed.num_return_sequences == 1, "stream returns one sequence; num_return_sequences must be 1");
    const auto emit = [&](std::string_view piece) {
      if (callback_error) return false;
      try {
        return on_text_piece(piece);
      } catch (...) {
        callback_error = std::current_exception();
        return false;
      }
    };
    if (parsed.num_beams > 1) {
      Result r = std::move(impl_->run({image}, {prompt}, parsed, start, {}).front().front());
      if (!r.text.empty()) emit(r.text);
      return r;
    }
    // Backend._stream: the text of every token so far, less what was shown,
    // held back while it ends inside a multi-byte character.
    std::vector<int64_t> tokens;
    std::string shown;
    const pali::TokenCallback on_token = [&](int64_t, int64_t token) {
      tokens.push_back(token);
      const std::string text = impl_->tokenizer->decode(tokens, impl_->pad_id, impl_->eos_id);
      constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
      const bool held = text.size() >= kReplacement.size() &&
                        std::string_view(text).substr(text.size() - kReplacement.size()) == kReplacement;
      if (text.compare(0, shown.size(), shown) == 0 && !held) {
        const bool grew = text.size() > shown.size();
        const std::string piece = grew ? text.substr(shown.size()) : std::string();
        shown = text;
        if (grew && !emit(piece)) return false;
      }
      return true;
    };
    Result r = std::move(impl_->run({image}, {prompt}, parsed, start, on_token).front().front());
    if (!callback_error && r.text != shown && r.text.compare(0, shown.size(), shown) == 0)
      emit(std::string_view(r.text).substr(shown.size()));
    return r;
  });
  if (callback_error) std::rethrow_exception(callback_error);
  return out;
}

std::vector<float> Engine::pixel_values(const Image& image) const {
  return translated([&] {
    std::vector<float> out;
    impl_->append_pixels(image, out);
    return out;
  });
}

Engine::Prompts Engine::encode_prompts(const std::vector<std::string>& prompts) const {
  return translated([&] {
    PALI_CHECK_ARG(!prompts.empty(), "empty list of images and prompts");
    pali::api::EncodedPrompts encoded = impl_->encode(prompts);
    Prompts out;
    out.batch = encoded.batch;
    out.length = encoded.length;
    out.input_ids = std::move(encoded.input_ids);
    out.attention_mask = std::move(encoded.attention_mask);
    return out;
  });
}

std::vector<float> Engine::first_token_logits(const Image& image, const std::string& prompt) const {
  return translated([&] {
    const pali::api::EncodedPrompts encoded = impl_->encode({prompt});
    std::vector<float> pixels;
    impl_->append_pixels(image, pixels);
    pali::PromptBatch batch{pixels.data(), encoded.input_ids.data(), encoded.attention_mask.data(), 1,
                            encoded.length};
    pali::ScopedOpThreads scoped(impl_->threads);
    const auto decoder = impl_->model->prepare(batch);
    std::vector<float> logits(static_cast<size_t>(decoder->vocab_size()));
    decoder->start(1, 1)->first(logits.data());
    return logits;
  });
}

std::string Engine::decode(const std::vector<int64_t>& tokens) const {
  return translated([&] { return impl_->tokenizer->decode(tokens, impl_->pad_id, impl_->eos_id); });
}

std::vector<Object> Engine::parse_objects(const std::string& text, int width, int height) const {
  return translated([&] {
    PALI_CHECK_ARG(width > 0 && height > 0, "the image size must be positive, got ", width, "x", height);
    return impl_->objects(text, width, height);
  });
}

// ------------------------------------------------------------- the rest

std::string version() { return PALI_ENGINE_VERSION; }

const Image::Pixels& Image::pixels() const { return *pixels_; }

GenerateOptions& GenerateOptions::set(const std::string& name, OptionValue value) {
  for (auto& entry : by_name_)
    if (entry.first == name) {
      entry.second = std::move(value);
      return *this;
    }
  by_name_.emplace_back(name, std::move(value));
  return *this;
}

std::vector<OptionSpec> generation_option_specs() {
  static const char* kinds[] = {"int", "float", "bool", "early_stopping", "seed"};
  std::vector<OptionSpec> out;
  for (const auto& spec : pali::generation_option_specs())
    out.push_back({spec.name, kinds[static_cast<int>(spec.kind)], spec.default_value, spec.doc});
  return out;
}

Dtype dtype_from_name(const std::string& name) {
  const auto& table = pali::engine_dtypes();
  for (size_t i = 0; i < table.size(); ++i)
    if (name == table[i].name) return static_cast<Dtype>(i);
  throw Error(ErrorKind::invalid_argument, str_cat("dtype must be one of ", pali::engine_dtype_names(), ", got ",
                                                   pali::api::py_short_repr(name)));
}

const char* dtype_name(Dtype dtype) { return engine_dtype_of(dtype).name; }

Resize resize_from_name(const std::string& name) {
  if (name == "pad") return Resize::pad;
  if (name == "stretch") return Resize::stretch;
  throw Error(ErrorKind::invalid_argument,
              str_cat("resize must be one of pad, stretch, got ", pali::api::py_short_repr(name)));
}

std::string Result::to_json() const {
  using pali::api::json_number;
  std::string tokens_text = "[";
  for (size_t i = 0; i < tokens.size(); ++i) tokens_text += (i ? ", " : "") + std::to_string(tokens[i]);
  tokens_text += "]";
  const Timings& t = timings;
  return str_cat("{\"text\": ", pali::api::json_string(text), ", \"tokens\": ", tokens_text,
                 ", \"score\": ", json_number(score), ", \"timings\": {\"preprocess_ms\": ", json_number(t.preprocess_ms),
                 ", \"vision_ms\": ", json_number(t.vision_ms), ", \"encoder_ms\": ", json_number(t.encoder_ms),
                 ", \"first_token_ms\": ", json_number(t.first_token_ms), ", \"decode_ms\": ", json_number(t.decode_ms),
                 ", \"steps\": ", t.steps, ", \"generate_ms\": ", json_number(t.generate_ms),
                 ", \"total_ms\": ", json_number(t.total_ms), "}}");
}

}  // namespace pali_engine
