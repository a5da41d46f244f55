// The C++ and C APIs against the Python engine: api_test REFERENCES_DIR
//
// REFERENCES_DIR is what tests/cpp/make_references.py wrote there: images,
// arrays and references.tsv (its docstring lists the checks). Pixel arrays
// and token ids must be equal, first-token logits within 1e-4, generated
// tokens and texts identical, error kinds and messages the same; then the C
// API's round trip, streaming that stops early, callbacks that throw, and
// engines shared by threads. Prints one line per failure and a summary;
// exits 1 when anything failed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "pali_engine/pali_engine.h"
#include "pali_engine/pali_engine.hpp"

namespace {

using pali_engine::Engine;
using pali_engine::Error;
using pali_engine::ErrorKind;
using pali_engine::Image;

constexpr double kLogitsTolerance = 1e-4;

std::string folder;
int failures = 0;
std::map<std::string, int> checks;

void check(bool ok, const std::string& kind, const std::string& what) {
  ++checks[kind];
  if (!ok) {
    ++failures;
    std::cout << "FAIL " << kind << ": " << what << "\n";
  }
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == separator) {
      out.emplace_back();
    } else if (text[i] == '\\' && separator == '\t' && i + 1 < text.size()) {
      const char next = text[++i];
      out.back() += next == 't' ? '\t' : next == 'n' ? '\n' : next;
    } else {
      out.back() += text[i];
    }
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

// A file in the folder, or raw:NAME.u8:HEIGHT:WIDTH:CHANNELS for pixels given as an array.
Image load_image(const std::string& name) {
  if (name.rfind("raw:", 0) == 0) {
    const auto parts = split(name.substr(4), ':');
    const auto bytes = read_array<uint8_t>(parts[0]);
    return Image::from_pixels(std::stoi(parts[2]), std::stoi(parts[1]), std::stoi(parts[3]), bytes.data());
  }
  return Image::from_file(folder + "/" + name);
}

std::vector<float> floats_of(const std::string& text) {
  std::vector<float> out;
  for (const auto& part : split(text, ',')) out.push_back(std::stof(part));
  return out;
}

std::vector<int64_t> ids_of(const std::string& text) {
  std::vector<int64_t> out;
  if (text.empty()) return out;
  for (const auto& part : split(text, ',')) out.push_back(std::stoll(part));
  return out;
}

pali_engine::GenerateOptions options_of(const std::string& text) {
  pali_engine::GenerateOptions options;
  if (text == "-") return options;
  for (const auto& item : split(text, ';')) {
    const size_t eq = item.find('='), colon = item.find(':', eq);
    const std::string name = item.substr(0, eq), kind = item.substr(eq + 1, colon - eq - 1),
                      value = item.substr(colon + 1);
    if (kind == "int") {
      if (value[0] != '-' && std::stoull(value) > static_cast<unsigned long long>(INT64_MAX))
        options.set(name, static_cast<uint64_t>(std::stoull(value)));
      else
        options.set(name, static_cast<int64_t>(std::stoll(value)));
    } else if (kind == "float") {
      options.set(name, std::stod(value));
    } else if (kind == "bool") {
      options.set(name, value == "1");
    } else if (kind == "str") {
      options.set(name, value);
    } else {
      options.set(name, std::monostate{});
    }
  }
  return options;
}

pali_engine::Resample resample_of(const std::string& name) {
  if (name == "nearest") return pali_engine::Resample::nearest;
  if (name == "bicubic") return pali_engine::Resample::bicubic;
  if (name == "lanczos") return pali_engine::Resample::lanczos;
  return pali_engine::Resample::bilinear;
}

std::string kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_argument: return "invalid_argument";
    case ErrorKind::model_file: return "model_file";
    case ErrorKind::out_of_memory: return "out_of_memory";
    case ErrorKind::runtime: return "runtime";
  }
  return "?";
}

// The Error fn() throws, as "kind: message", or "no error".
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& error) {
    return kind_name(error.kind()) + ": " + error.what();
  } catch (const std::exception& error) {
    return std::string("not a pali_engine::Error: ") + error.what();
  }
  return "no error";
}

// Engines are loaded once per (file, dtype).
const Engine& engine_for(const std::string& path, const std::string& dtype = "float32") {
  static std::map<std::string, std::unique_ptr<Engine>> engines;
  auto& slot = engines[path + "|" + dtype];
  if (!slot) slot = std::make_unique<Engine>(Engine::load(path, {pali_engine::dtype_from_name(dtype), 0}));
  return *slot;
}

template <typename T>
double max_difference(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return INFINITY;
  double most = 0;
  for (size_t i = 0; i < a.size(); ++i) most = std::max(most, std::fabs(static_cast<double>(a[i]) - b[i]));
  return most;
}

std::string join(const std::vector<int64_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out;
}

// ---------------------------------------------------------------- the reference lines

void check_references() {
  std::ifstream in(folder + "/references.tsv");
  std::vector<std::vector<std::string>> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(split(line, '\t'));
  check(!lines.empty(), "references", "references.tsv is empty or missing");
  double worst_pixels = 0, worst_logits = 0;
  for (size_t n = 0; n < lines.size(); ++n) {
    const auto& f = lines[n];
    const std::string& kind = f[0];
    const std::string where = "line " + std::to_string(n + 1);
    try {
      if (kind == "preprocess") {
        const auto ours = pali_engine::preprocess(load_image(f[1]), std::stoi(f[2]), floats_of(f[5]), floats_of(f[6]),
                                                  resample_of(f[3]), pali_engine::resize_from_name(f[4]));
        const double d = max_difference(ours, read_array<float>(f[7]));
        worst_pixels = std::max(worst_pixels, d);
        check(d == 0, "pixels", where + ": preprocess(" + f[1] + ", " + f[2] + ", " + f[3] + ", " + f[4] +
                                   ") differs by " + std::to_string(d));
      } else if (kind == "pixels") {
        const double d = max_difference(engine_for(f[1]).pixel_values(load_image(f[2])), read_array<float>(f[3]));
        worst_pixels = std::max(worst_pixels, d);
        check(d == 0, "pixels", where + ": pixel_values(" + f[2] + ") differs by " + std::to_string(d));
      } else if (kind == "prompts") {
        const std::vector<std::string> prompts(f.begin() + 6, f.end());
        const auto ours = engine_for(f[1]).encode_prompts(prompts);
        check(ours.batch == std::stoll(f[2]) && ours.length == std::stoll(f[3]) &&
                  ours.input_ids == read_array<int64_t>(f[4]) && ours.attention_mask == read_array<int64_t>(f[5]),
              "token ids", where + ": encode_prompts differs: " + join(ours.input_ids));
      } else if (kind == "logits") {
        const auto ours = engine_for(f[1]).first_token_logits(load_image(f[2]), f[3]);
        const double d = max_difference(ours, read_array<float>(f[4]));
        worst_logits = std::max(worst_logits, d);
        check(d <= kLogitsTolerance, "logits", where + ": first-token logits differ by " + std::to_string(d));
      } else if (kind == "generate") {
        const auto options = options_of(f[3]);
        const int count = std::stoi(f[4]);
        std::vector<Image> images;
        std::vector<std::string> prompts;
        for (int i = 0; i < count; ++i) {
          images.push_back(load_image(f[5 + 2 * i]));
          prompts.push_back(f[6 + 2 * i]);
        }
        const auto results = engine_for(f[1], f[2]).generate_sequences(images, prompts, options);
        size_t expected = 0;
        for (size_t k = n + 1; k < lines.size() && lines[k][0] == "result"; ++k, ++expected) {
          const auto& r = lines[k];
          const size_t input = std::stoul(r[1]), sequence = std::stoul(r[2]);
          const std::string what = where + " (" + f[2] + ", " + f[3] + ") input " + r[1] + " sequence " + r[2];
          if (input >= results.size() || sequence >= results[input].size()) {
            check(false, "generation", what + ": missing");
            continue;
          }
          const auto& ours = results[input][sequence];
          const double score = std::stod(r[5]);
          check(ours.text == r[3], "generation", what + ": text '" + ours.text + "' != '" + r[3] + "'");
          check(join(ours.tokens) == r[4], "generation", what + ": tokens " + join(ours.tokens) + " != " + r[4]);
          check(std::fabs(ours.score - score) <= 1e-5 * std::max(1.0, std::fabs(score)), "generation",
                what + ": score " + std::to_string(ours.score) + " != " + r[5]);
        }
        size_t ours_count = 0;
        for (const auto& per_input : results) ours_count += per_input.size();
        check(ours_count == expected, "generation", where + ": " + std::to_string(ours_count) + " sequences, not " +
                                                        std::to_string(expected));
      } else if (kind == "stream") {
        std::vector<std::string> pieces;
        engine_for(f[1]).stream(load_image(f[2]), f[3], options_of(f[4]), [&](std::string_view piece) {
          pieces.emplace_back(piece);
          return true;
        });
        const std::vector<std::string> expected(f.begin() + 5, f.end());
        check(pieces == expected, "streaming", where + ": " + std::to_string(pieces.size()) + " pieces, not " +
                                                   std::to_string(expected.size()) + " as in Python");
      } else if (kind == "decode") {
        const std::string ours = engine_for(f[1]).decode(ids_of(f[2]));
        check(ours == f[3], "decode", where + ": '" + ours + "' != '" + f[3] + "'");
      } else if (kind == "objects") {
        const auto ours = engine_for(f[1]).parse_objects(f[4], std::stoi(f[2]), std::stoi(f[3]));
        check(ours.size() == f.size() - 5, "objects", where + ": " + std::to_string(ours.size()) + " objects");
        for (size_t k = 0; k < ours.size() && k + 5 < f.size(); ++k) {
          const auto parts = split(f[5 + k], '\x1f');
          const auto& o = ours[k];
          std::vector<int64_t> codes(o.codes.begin(), o.codes.end());
          std::string expected_codes = parts[5];
          std::replace(expected_codes.begin(), expected_codes.end(), ' ', ',');
          check(o.x0 == std::stod(parts[0]) && o.y0 == std::stod(parts[1]) && o.x1 == std::stod(parts[2]) &&
                    o.y1 == std::stod(parts[3]) && o.label == parts[4] && join(codes) == expected_codes,
                "objects", where + ": object " + std::to_string(k) + " differs ('" + o.label + "')");
        }
      } else if (kind == "error") {
        const std::string& what = f[1];
        const std::string expected = f[2] + ": " + f[3];
        std::string ours;
        if (what == "options") {
          ours = error_of([&] { engine_for(f[4]).generate(load_image("shapes.png"), "caption en", options_of(f[5])); });
        } else if (what == "stream") {
          ours = error_of([&] {
            engine_for(f[4]).stream(load_image("shapes.png"), "caption en", options_of(f[5]),
                                    [](std::string_view) { return true; });
          });
        } else if (what == "prompts") {
          const std::vector<std::string> prompts(f.begin() + 5, f.end());
          ours = error_of([&] {
            engine_for(f[4]).generate(std::vector<Image>(prompts.size(), load_image("shapes.png")), prompts);
          });
        } else if (what == "batch") {
          ours = error_of([&] {
            engine_for(f[4]).generate(std::vector<Image>(std::stoul(f[5]), load_image("shapes.png")),
                                      std::vector<std::string>(std::stoul(f[6]), "caption en"));
          });
        } else if (what == "image" || what == "image_prefix") {
          ours = error_of([&] { Image::from_file(f[4]); });
        } else if (what == "load") {
          pali_engine::LoadOptions options;
          if (!f[5].empty()) options.threads = std::stoi(f[5]);
          ours = error_of([&] { Engine::load(f[4], options); });
        }
        // SentencePiece's own messages differ between its versions: only what precedes them is compared.
        const std::string quoted = "not a SentencePiece model: ";
        const size_t library = expected.find(" src/sentencepiece_processor.cc(") == std::string::npos
                                   ? std::string::npos
                                   : expected.rfind(quoted) + quoted.size();
        const bool same = what == "image_prefix" ? ours.rfind(expected, 0) == 0
                          : library != std::string::npos ? ours.compare(0, library, expected, 0, library) == 0
                                                         : ours == expected;
        check(same, "errors", where + ": got   " + ours + "\n     expected " + expected);
      }
    } catch (const std::exception& error) {
      check(false, kind, where + ": " + error.what());
    }
  }
  std::cout << "largest pixel difference " << worst_pixels << ", largest logit difference " << worst_logits << "\n";
}

// ---------------------------------------------------------------- the C++ API beyond Python's

void check_cpp_api(const std::string& model) {
  const Engine& engine = engine_for(model);
  const Image shapes = load_image("shapes.png");
  const auto full = engine.generate(shapes, "caption en");

  // A callback returning false stops the generation after its token.
  std::vector<std::string> pieces;
  const auto stopped = engine.stream(shapes, "caption en", {}, [&](std::string_view piece) {
    pieces.emplace_back(piece);
    return false;
  });
  check(pieces.size() == 1 && stopped.tokens.size() == 1 && !stopped.finished && full.tokens.size() > 2, "streaming",
        "a callback returning false did not stop after one token: " + join(stopped.tokens));

  // An exception thrown by a callback leaves unchanged.
  struct Mine : std::runtime_error {
    Mine() : std::runtime_error("mine") {}
  };
  bool caught = false;
  try {
    engine.stream(shapes, "caption en", {}, [](std::string_view) -> bool { throw Mine(); });
  } catch (const Mine&) {
    caught = true;
  }
  check(caught, "streaming", "a callback's exception did not reach the caller as it was thrown");

  pali_engine::GenerateOptions two;
  two.num_beams = 2;
  two.num_return_sequences = 2;
  check(error_of([&] { engine.generate(shapes, "caption en", two); }).rfind("invalid_argument: generate returns one", 0) == 0,
        "errors", "generate of one sequence with num_return_sequences=2");
  check(engine.generate_sequences({shapes}, {"caption en"}, two).front().size() == 2, "generation",
        "generate_sequences gives num_return_sequences sequences");
  check(error_of([] { Image::from_rgb(4, 4, std::vector<uint8_t>(10)); }).rfind("invalid_argument: ", 0) == 0, "errors",
        "an RGB buffer of the wrong size");
  check(error_of([&] { engine.encode_prompts({"caption en", "ab\xff"}); }) ==
            "invalid_argument: prompt 1: text is not valid UTF-8 (at byte 2)",
        "errors", "a prompt that is not UTF-8");
  check(error_of([] { pali_engine::dtype_from_name("float64"); }) ==
            "invalid_argument: dtype must be one of float32, float16, bfloat16, int8, int4, int4_g64, int4_g128, got 'float64'",
        "errors", "dtype_from_name");

  // Fields and set() by name give the same options.
  pali_engine::GenerateOptions fields, named;
  fields.num_beams = 3;
  fields.early_stopping = pali_engine::EarlyStopping::never;
  named.set("num_beams", int64_t{3}).set("early_stopping", std::string("never"));
  check(engine.generate(shapes, "caption en", fields).tokens == engine.generate(shapes, "caption en", named).tokens,
        "generation", "options by field and by name");

  // An image given as pixels is the image read from its file.
  std::vector<uint8_t> rgb(shapes.data(), shapes.data() + 64 * 64 * 3);
  check(engine.pixel_values(Image::from_rgb(64, 64, rgb)) == engine.pixel_values(shapes), "pixels",
        "from_rgb of the file's pixels");
  check(engine.config_json().find("\"architecture\":") != std::string::npos && engine.architecture() == "pali" &&
            engine.image_size() == 64 && engine.resize() == pali_engine::Resize::pad,
        "engine", "config and properties");

  // One engine shared by threads.
  std::vector<std::vector<int64_t>> tokens(3);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < tokens.size(); ++t)
    threads.emplace_back([&, t] { tokens[t] = engine.generate(shapes, "caption en").tokens; });
  for (auto& thread : threads) thread.join();
  for (const auto& t : tokens) check(t == full.tokens, "threads", "a thread's tokens differ: " + join(t));
}

// ---------------------------------------------------------------- the C API

// The status of a C call and the message it left, read in that order.
std::pair<pali_status_t, std::string> c_call(pali_status_t status) { return {status, pali_last_error()}; }

int collect_piece(const char* piece, size_t length, void* user_data) {
  static_cast<std::string*>(user_data)->append(piece, length);
  return 1;
}

int stop_at_once(const char*, size_t, void* user_data) {
  ++*static_cast<int*>(user_data);
  return 0;
}

void check_c_api(const std::string& model) {
  const Engine& cpp = engine_for(model);
  const auto expected = cpp.generate(load_image("shapes.png"), "caption en");

  pali_engine_t* engine = nullptr;
  pali_image_t* image = nullptr;
  pali_options_t* options = nullptr;
  pali_result_t* result = nullptr;
  check(pali_engine_load(model.c_str(), "float32", 0, nullptr, &engine) == PALI_OK, "c api",
        std::string("load: ") + pali_last_error());
  check(pali_image_from_file((folder + "/shapes.png").c_str(), &image) == PALI_OK, "c api", "image");
  check(std::strcmp(pali_engine_architecture(engine), "pali") == 0, "c api", "architecture");
  check(pali_generate(engine, image, "caption en", nullptr, &result) == PALI_OK, "c api", pali_last_error());
  const int64_t* tokens = nullptr;
  const size_t count = pali_result_tokens(result, 0, &tokens);
  check(pali_result_count(result) == 1 && std::string(pali_result_text(result, 0)) == expected.text &&
            std::vector<int64_t>(tokens, tokens + count) == expected.tokens &&
            pali_result_score(result, 0) == expected.score && pali_result_finished(result, 0) == 1 &&
            pali_result_timings(result, 0).steps == expected.timings.steps,
        "c api", "generate's result differs from the C++ API's");
  const std::string json = pali_result_json(result, 0);
  check(json.rfind("{\"text\": \"" + expected.text + "\", \"tokens\": [", 0) == 0, "c api", "json: " + json);
  check(pali_result_text(result, 5) == nullptr && pali_result_tokens(result, 5, &tokens) == 0, "c api",
        "an index past the end");
  pali_result_free(result);
  result = nullptr;

  // Options by name, a batch, and the objects of a detection answer.
  check(pali_options_new(&options) == PALI_OK && pali_options_set_int(options, "num_beams", 3) == PALI_OK &&
            pali_options_set_int(options, "num_return_sequences", 2) == PALI_OK &&
            pali_options_set_string(options, "early_stopping", "never") == PALI_OK &&
            pali_options_set_none(options, "max_new_tokens") == PALI_OK,
        "c api", "options");
  const pali_image_t* images[] = {image, image};
  const char* prompts[] = {"caption en", "detect circle ; star"};
  check(pali_generate_batch(engine, images, prompts, 2, options, &result) == PALI_OK, "c api", pali_last_error());
  check(pali_result_count(result) == 4 && pali_result_sequences_per_input(result) == 2, "c api", "batch shape");
  pali_object_t object{};
  const size_t objects = pali_result_object_count(result, 2);
  check(objects > 0 && pali_result_object(result, 2, 0, &object) == PALI_OK && object.label && object.x1 > object.x0 &&
            !object.has_codes,
        "c api", "detection objects: " + std::string(pali_result_text(result, 2)));
  check(pali_result_object(result, 2, objects, &object) == PALI_ERROR_INVALID_ARGUMENT, "c api",
        "an object past the end");
  pali_result_free(result);
  result = nullptr;

  // Streaming: every piece, then a callback that stops at once.
  std::string streamed;
  check(pali_stream(engine, image, "caption en", nullptr, collect_piece, &streamed, &result) == PALI_OK &&
            streamed == expected.text && std::string(pali_result_text(result, 0)) == expected.text,
        "c api", "stream: '" + streamed + "'");
  pali_result_free(result);
  result = nullptr;
  int calls = 0;
  check(pali_stream(engine, image, "caption en", nullptr, stop_at_once, &calls, &result) == PALI_OK && calls == 1 &&
            pali_result_tokens(result, 0, &tokens) == 1 && pali_result_finished(result, 0) == 0,
        "c api", "a callback returning 0 stops the stream");
  pali_result_free(result);
  result = nullptr;

  // Errors: statuses and this thread's messages, the same as the C++ API's.
  pali_engine_t* none = nullptr;
  const std::string missing = folder + "/missing.onnx";
  const auto [missing_status, missing_message] = c_call(pali_engine_load(missing.c_str(), nullptr, 0, nullptr, &none));
  check(missing_status == PALI_ERROR_MODEL_FILE && none == nullptr && missing_message == missing + ": no such model file",
        "c api", "a missing model: " + missing_message);
  const auto [dtype_status, dtype_message] = c_call(pali_engine_load(model.c_str(), "float64", 0, nullptr, &none));
  check(dtype_status == PALI_ERROR_INVALID_ARGUMENT &&
            dtype_message == "dtype must be one of float32, float16, bfloat16, int8, int4, int4_g64, int4_g128, got 'float64'",
        "c api", "a bad dtype: " + dtype_message);
  pali_options_t* bad = nullptr;
  pali_options_new(&bad);
  pali_options_set_float(bad, "top_p", 1.5);
  const auto [option_status, option_message] = c_call(pali_generate(engine, image, "caption en", bad, &result));
  check(option_status == PALI_ERROR_INVALID_ARGUMENT && result == nullptr &&
            option_message == "top_p must be in (0, 1], got 1.5",
        "c api", "a bad option: " + option_message);
  pali_options_free(bad);
  const auto [null_status, null_message] = c_call(pali_generate(nullptr, image, "caption en", nullptr, &result));
  check(null_status == PALI_ERROR_INVALID_ARGUMENT && null_message == "engine must not be NULL", "c api",
        "a NULL engine: " + null_message);
  std::string other;
  std::thread([&] {
    pali_image_t* nothing = nullptr;
    pali_image_from_file("/nonexistent/image.png", &nothing);
    other = pali_last_error();
  }).join();
  check(other == "image file not found: '/nonexistent/image.png'" &&
            std::string(pali_last_error()) == "engine must not be NULL",
        "c api", "the last error is per thread: " + other);
  pali_image_t* two_channels = nullptr;
  const uint8_t pixels[18] = {0};
  const auto [channels_status, channels_message] = c_call(pali_image_from_pixels(3, 3, 2, pixels, &two_channels));
  check(channels_status == PALI_ERROR_INVALID_ARGUMENT && two_channels == nullptr &&
            channels_message == "image array must have 1, 3 or 4 channels, got 2 (shape (3, 3, 2))",
        "c api", "two channels: " + channels_message);

  pali_options_free(options);
  pali_image_free(image);
  pali_engine_free(engine);
  pali_engine_free(nullptr);
  pali_result_free(nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: api_test REFERENCES_DIR MODEL\n";
    return 2;
  }
  folder = argv[1];
  const std::string model = argv[2];
  try {
    check_references();
    check_cpp_api(model);
    check_c_api(model);
  } catch (const std::exception& error) {
    check(false, "test", std::string("stopped by an exception: ") + error.what());
  }
  int total = 0;
  for (const auto& [kind, count] : checks) {
    std::cout << "  " << kind << ": " << count << " checks\n";
    total += count;
  }
  std::cout << (failures ? "FAILED: " : "passed: ") << total - failures << " of " << total << " checks ("
            << pali_engine::version() << ")\n";
  return failures ? 1 : 0;
}
