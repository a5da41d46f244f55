// The C API (pali_engine.h) on the C++ API: handles own C++ objects, every
// call catches every exception and turns it into a status code and this
// thread's last-error message, so nothing is thrown into C.
#include "pali_engine/pali_engine.h"

#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "pali_engine/pali_engine.hpp"

struct pali_engine_s {
  pali_engine::Engine engine;
};

struct pali_image_s {
  pali_engine::Image image;
};

struct pali_options_s {
  pali_engine::GenerateOptions options;
};

struct pali_result_s {
  std::vector<pali_engine::Result> sequences;
  std::vector<std::string> json;
  size_t per_input = 1;
};

namespace {

thread_local std::string last_error;

pali_status_t fail(pali_status_t status, const char* message) noexcept {
  try {
    last_error = message;
  } catch (...) {  // no memory for the message: the status still says what failed
  }
  return status;
}

pali_status_t status_of(pali_engine::ErrorKind kind) {
  switch (kind) {
    case pali_engine::ErrorKind::invalid_argument: return PALI_ERROR_INVALID_ARGUMENT;
    case pali_engine::ErrorKind::model_file: return PALI_ERROR_MODEL_FILE;
    case pali_engine::ErrorKind::out_of_memory: return PALI_ERROR_OUT_OF_MEMORY;
    case pali_engine::ErrorKind::runtime: break;
  }
  return PALI_ERROR_RUNTIME;
}

// fn() with every exception turned into a status and the thread's message.
template <typename F>
pali_status_t guarded(F&& fn) noexcept {
  try {
    fn();
    return PALI_OK;
  } catch (const pali_engine::Error& error) {
    return fail(status_of(error.kind()), error.what());
  } catch (const std::bad_alloc&) {
    return fail(PALI_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& error) {
    return fail(PALI_ERROR_RUNTIME, error.what());
  } catch (...) {
    return fail(PALI_ERROR_RUNTIME, "an unknown exception");
  }
}

#define PALI_REQUIRE(pointer)                                                   \
  do {                                                                          \
    if ((pointer) == nullptr) return fail(PALI_ERROR_INVALID_ARGUMENT, #pointer " must not be NULL"); \
  } while (0)

pali_result_t* make_result(std::vector<std::vector<pali_engine::Result>> per_input) {
  auto* result = new pali_result_t();
  result->per_input = per_input.empty() ? 1 : per_input.front().size();
  for (auto& sequences : per_input)
    for (auto& sequence : sequences) result->sequences.push_back(std::move(sequence));
  for (const auto& sequence : result->sequences) result->json.push_back(sequence.to_json());
  return result;
}

const pali_engine::Result* sequence(const pali_result_t* result, size_t index) {
  return result && index < result->sequences.size() ? &result->sequences[index] : nullptr;
}

pali_status_t set_option(pali_options_t* options, const char* name, pali_engine::OptionValue value) {
  PALI_REQUIRE(options);
  PALI_REQUIRE(name);
  return guarded([&] { options->options.set(name, std::move(value)); });
}

const pali_engine::GenerateOptions& options_or_defaults(const pali_options_t* options) {
  static const pali_engine::GenerateOptions defaults;
  return options ? options->options : defaults;
}

}  // namespace

extern "C" {

const char* pali_version(void) {
  static const std::string version = pali_engine::version();
  return version.c_str();
}

const char* pali_last_error(void) { return last_error.c_str(); }

pali_status_t pali_engine_load(const char* path, const char* dtype, int threads, const char* resize,
                               pali_engine_t** engine) {
  PALI_REQUIRE(path);
  PALI_REQUIRE(engine);
  *engine = nullptr;
  return guarded([&] {
    pali_engine::LoadOptions options;
    if (dtype) options.dtype = pali_engine::dtype_from_name(dtype);
    options.threads = threads;
    if (resize) options.resize = pali_engine::resize_from_name(resize);
    *engine = new pali_engine_t{pali_engine::Engine::load(path, options)};
  });
}

void pali_engine_free(pali_engine_t* engine) { delete engine; }

const char* pali_engine_architecture(const pali_engine_t* engine) {
  return engine ? engine->engine.architecture().c_str() : nullptr;
}

pali_status_t pali_image_from_file(const char* path, pali_image_t** image) {
  PALI_REQUIRE(path);
  PALI_REQUIRE(image);
  *image = nullptr;
  return guarded([&] { *image = new pali_image_t{pali_engine::Image::from_file(path)}; });
}

pali_status_t pali_image_from_rgb(int width, int height, const uint8_t* rgb, pali_image_t** image) {
  return pali_image_from_pixels(width, height, 3, rgb, image);
}

pali_status_t pali_image_from_pixels(int width, int height, int channels, const uint8_t* pixels,
                                     pali_image_t** image) {
  PALI_REQUIRE(image);
  *image = nullptr;
  return guarded([&] { *image = new pali_image_t{pali_engine::Image::from_pixels(width, height, channels, pixels)}; });
}

void pali_image_free(pali_image_t* image) { delete image; }
int pali_image_width(const pali_image_t* image) { return image ? image->image.width() : 0; }
int pali_image_height(const pali_image_t* image) { return image ? image->image.height() : 0; }

pali_status_t pali_options_new(pali_options_t** options) {
  PALI_REQUIRE(options);
  *options = nullptr;
  return guarded([&] { *options = new pali_options_t(); });
}

void pali_options_free(pali_options_t* options) { delete options; }

pali_status_t pali_options_set_int(pali_options_t* options, const char* name, int64_t value) {
  return set_option(options, name, value);
}
pali_status_t pali_options_set_uint(pali_options_t* options, const char* name, uint64_t value) {
  return set_option(options, name, value);
}
pali_status_t pali_options_set_float(pali_options_t* options, const char* name, double value) {
  return set_option(options, name, value);
}
pali_status_t pali_options_set_bool(pali_options_t* options, const char* name, int value) {
  return set_option(options, name, value != 0);
}
pali_status_t pali_options_set_string(pali_options_t* options, const char* name, const char* value) {
  PALI_REQUIRE(value);
  return set_option(options, name, std::string(value));
}
pali_status_t pali_options_set_none(pali_options_t* options, const char* name) {
  return set_option(options, name, std::monostate{});
}

pali_status_t pali_generate(const pali_engine_t* engine, const pali_image_t* image, const char* prompt,
                            const pali_options_t* options, pali_result_t** result) {
  PALI_REQUIRE(image);
  PALI_REQUIRE(prompt);
  const pali_image_t* images[] = {image};
  const char* prompts[] = {prompt};
  return pali_generate_batch(engine, images, prompts, 1, options, result);
}

pali_status_t pali_generate_batch(const pali_engine_t* engine, const pali_image_t* const* images,
                                  const char* const* prompts, size_t count, const pali_options_t* options,
                                  pali_result_t** result) {
  PALI_REQUIRE(engine);
  PALI_REQUIRE(result);
  *result = nullptr;
  if (count > 0) {
    PALI_REQUIRE(images);
    PALI_REQUIRE(prompts);
    for (size_t i = 0; i < count; ++i)
      if (!images[i] || !prompts[i]) return fail(PALI_ERROR_INVALID_ARGUMENT, "images and prompts must not hold NULL");
  }
  return guarded([&] {
    std::vector<pali_engine::Image> image_list;
    std::vector<std::string> prompt_list;
    for (size_t i = 0; i < count; ++i) {
      image_list.push_back(images[i]->image);
      prompt_list.emplace_back(prompts[i]);
    }
    *result = make_result(engine->engine.generate_sequences(image_list, prompt_list, options_or_defaults(options)));
  });
}

pali_status_t pali_stream(const pali_engine_t* engine, const pali_image_t* image, const char* prompt,
                          const pali_options_t* options, pali_text_callback on_text_piece, void* user_data,
                          pali_result_t** result) {
  PALI_REQUIRE(engine);
  PALI_REQUIRE(image);
  PALI_REQUIRE(prompt);
  PALI_REQUIRE(on_text_piece);
  if (result) *result = nullptr;
  return guarded([&] {
    pali_engine::Result out = engine->engine.stream(
        image->image, prompt, options_or_defaults(options),
        [&](std::string_view piece) { return on_text_piece(piece.data(), piece.size(), user_data) != 0; });
    if (result) {
      std::vector<std::vector<pali_engine::Result>> one(1);
      one[0].push_back(std::move(out));
      *result = make_result(std::move(one));
    }
  });
}

void pali_result_free(pali_result_t* result) { delete result; }

size_t pali_result_count(const pali_result_t* result) { return result ? result->sequences.size() : 0; }

size_t pali_result_sequences_per_input(const pali_result_t* result) { return result ? result->per_input : 0; }

const char* pali_result_text(const pali_result_t* result, size_t index) {
  const auto* s = sequence(result, index);
  return s ? s->text.c_str() : nullptr;
}

size_t pali_result_tokens(const pali_result_t* result, size_t index, const int64_t** tokens) {
  const auto* s = sequence(result, index);
  if (tokens) *tokens = s ? s->tokens.data() : nullptr;
  return s ? s->tokens.size() : 0;
}

double pali_result_score(const pali_result_t* result, size_t index) {
  const auto* s = sequence(result, index);
  return s ? s->score : 0.0;
}

int pali_result_finished(const pali_result_t* result, size_t index) {
  const auto* s = sequence(result, index);
  return s && s->finished ? 1 : 0;
}

pali_timings_t pali_result_timings(const pali_result_t* result, size_t index) {
  pali_timings_t out{};
  if (const auto* s = sequence(result, index)) {
    const auto& t = s->timings;
    out = {t.preprocess_ms, t.vision_ms, t.encoder_ms, t.first_token_ms, t.decode_ms, t.steps, t.generate_ms,
           t.total_ms};
  }
  return out;
}

size_t pali_result_object_count(const pali_result_t* result, size_t index) {
  const auto* s = sequence(result, index);
  return s ? s->objects.size() : 0;
}

pali_status_t pali_result_object(const pali_result_t* result, size_t index, size_t object, pali_object_t* out) {
  PALI_REQUIRE(result);
  PALI_REQUIRE(out);
  const auto* s = sequence(result, index);
  if (!s) return fail(PALI_ERROR_INVALID_ARGUMENT, "the result has no sequence of that index");
  if (object >= s->objects.size()) return fail(PALI_ERROR_INVALID_ARGUMENT, "the sequence has no object of that index");
  const pali_engine::Object& o = s->objects[object];
  *out = pali_object_t{};
  out->x0 = o.x0;
  out->y0 = o.y0;
  out->x1 = o.x1;
  out->y1 = o.y1;
  out->label = o.label.c_str();
  out->has_codes = o.codes.size() == 16 ? 1 : 0;
  for (size_t k = 0; k < o.codes.size() && k < 16; ++k) out->codes[k] = o.codes[k];
  return PALI_OK;
}

const char* pali_result_json(const pali_result_t* result, size_t index) {
  return result && index < result->json.size() ? result->json[index].c_str() : nullptr;
}

}  // extern "C"
