// pali-engine's C++ API: the engine without Python.
//
// Load a model file, give it images and prompts, get text (and the boxes of a
// detection or segmentation answer) back, or stream the text as it is
// generated. Everything the Python package does before and after the model is
// done here the same way: the image preprocessing of each architecture
// (PIL's resampling, reproduced in integer arithmetic), the prompt layout and
// the SentencePiece tokenizer carried in the file, the generation options
// with their checks and messages, and the results. The C API
// (pali_engine.h) is built on this one. docs/edge.md has examples.
//
//   auto engine = pali_engine::Engine::load("pali-default.onnx");
//   auto result = engine.generate(pali_engine::Image::from_file("shapes.png"), "caption en");
//   std::cout << result.text << "\n";
//
// Every failure is a pali_engine::Error whose kind says what failed and whose
// message is the one the Python package gives for the same mistake.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#if defined(_WIN32)
#define PALI_ENGINE_API
#else
#define PALI_ENGINE_API __attribute__((visibility("default")))
#endif

namespace pali_engine {

// The package's version, as Python's pali_engine.__version__.
PALI_ENGINE_API std::string version();

// ------------------------------------------------------------------ errors

enum class ErrorKind {
  invalid_argument,  // the caller passed something wrong (Python: ValueError)
  model_file,        // a model file is missing, broken or inconsistent (Python: ModelFileError)
  out_of_memory,     // a request too large for this machine (Python: MemoryError)
  runtime,           // anything else; the message says what and where (Python: RuntimeError)
};

class PALI_ENGINE_API Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

// ------------------------------------------------------------------ images

// An image as decoded from a file or given as pixels: 8-bit RGB, or RGBA when
// it has transparency (composited on white before the model sees it). Copies
// share the pixels.
class PALI_ENGINE_API Image {
 public:
  // A PNG or JPEG file; Error(invalid_argument) when it cannot be read.
  static Image from_file(const std::string& path);
  // width x height pixels of 3 bytes (R, G, B), rows one after the other.
  static Image from_rgb(int width, int height, const uint8_t* rgb);
  static Image from_rgb(int width, int height, const std::vector<uint8_t>& rgb);
  // As a uint8 array of shape (height, width, channels) is taken by Python:
  // 1 channel (grey), 3 (RGB) or 4 (RGBA).
  static Image from_pixels(int width, int height, int channels, const uint8_t* pixels);

  int width() const;
  int height() const;
  int channels() const;  // 3 or 4
  // height x width x channels bytes.
  const uint8_t* data() const;
  // Decoded from a file: a "paligemma" model composites its transparency as
  // PIL does (Image.alpha_composite), and pixels given as an array as NumPy does.
  bool decoded_from_file() const;

  // The decoded pixels, for the engine's own preprocessing.
  struct Pixels;
  const Pixels& pixels() const;

 private:
  explicit Image(std::shared_ptr<const Pixels> pixels) : pixels_(std::move(pixels)) {}
  static Image from_array(int width, int height, int channels, const uint8_t* pixels);
  std::shared_ptr<const Pixels> pixels_;
};

// How an image that is not square becomes the model's square input.
enum class Resize {
  model_default,  // the architecture's convention: pad for "pali", stretch for "paligemma"
  pad,            // centred on a square filled with the median colour of its border
  stretch,        // stretched to the square
};

// PIL's resampling filters, as a model config's "resample" names them.
enum class Resample { nearest, bilinear, bicubic, lanczos };

// The "pali" architecture's preprocessing (Python: pali_engine.image.fit_to_input):
// uint8 [size, size, 3], the pixels the model sees before normalisation.
PALI_ENGINE_API std::vector<uint8_t> fit_to_input(const Image& image, int size, Resample resample = Resample::bilinear,
                                                  Resize resize = Resize::pad);
// ... then (x / 255 - mean) / std in float32, channels first (Python: pali_engine.image.preprocess):
// float32 [3, size, size].
PALI_ENGINE_API std::vector<float> preprocess(const Image& image, int size, const std::vector<float>& mean,
                                              const std::vector<float>& std, Resample resample = Resample::bilinear,
                                              Resize resize = Resize::pad);

// -------------------------------------------------------------- generation

// Beam search's stopping rule, as transformers' early_stopping: False, True or "never".
enum class EarlyStopping { heuristic, on, never };

// An option's value given by name: None, a bool, an integer, a number or a string.
using OptionValue = std::variant<std::monostate, bool, int64_t, uint64_t, double, std::string>;

// The options of generate(), named and meant as in transformers' generate()
// and Python's Engine.generate; an option left unset takes its default. The
// values are checked when a generation starts, with Python's messages.
struct PALI_ENGINE_API GenerateOptions {
  std::optional<int64_t> max_new_tokens;        // tokens to generate at most (unset: the model's default)
  std::optional<int64_t> min_new_tokens;        // eos is banned before this many tokens (0)
  std::optional<int64_t> num_beams;             // beam search with this many beams (1: greedy or sampling)
  std::optional<double> length_penalty;         // beam search: scores are sum_logprobs / length ** it (1.0)
  std::optional<EarlyStopping> early_stopping;  // beam search's stopping rule (heuristic: False)
  std::optional<int64_t> num_return_sequences;  // sequences per input (1)
  std::optional<int64_t> no_repeat_ngram_size;  // no n-gram of this size occurs twice (0: off)
  std::optional<double> repetition_penalty;     // scores of tokens already generated are divided by it (1.0)
  std::optional<bool> do_sample;                // sample instead of taking the best token (false)
  std::optional<double> temperature;            // sampling: scores are divided by it (1.0)
  std::optional<int64_t> top_k;                 // sampling: only the k best tokens (50; 0: all)
  std::optional<double> top_p;                  // sampling: the smallest set reaching probability p (1.0)
  std::optional<uint64_t> seed;                 // sampling: the generator's seed (unset: a fresh one per call)

  // An option by name, as Python's keyword arguments give it (an unknown name
  // or a value of the wrong kind is reported when a generation starts, as
  // Python reports it). It overrides the field of the same name.
  GenerateOptions& set(const std::string& name, OptionValue value);
  const std::vector<std::pair<std::string, OptionValue>>& by_name() const { return by_name_; }

 private:
  std::vector<std::pair<std::string, OptionValue>> by_name_;
};

// One generation option as the engine defines it (for command lines and bindings).
struct OptionSpec {
  std::string name;
  std::string kind;           // "int", "float", "bool", "early_stopping" or "seed"
  std::string default_value;  // as Python writes it: "50", "1.0", "False", "None"
  std::string doc;
};
PALI_ENGINE_API std::vector<OptionSpec> generation_option_specs();

struct Timings {
  double preprocess_ms = 0;   // prompts and images to arrays
  double vision_ms = 0;       // the vision tower
  double encoder_ms = 0;      // the rest before the first decoding step
  double first_token_ms = 0;  // the first decoding step
  double decode_ms = 0;       // the decoding steps after it
  int64_t steps = 0;          // decoding steps
  double generate_ms = 0;     // the whole search, vision included
  double total_ms = 0;        // preprocessing and search
};

// One object of a detection or segmentation answer.
struct Object {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // the box in the input image's pixels
  std::string label;
  std::vector<int> codes;  // a PaliGemma segmentation's 16 mask codes; empty when the answer has none
};

struct PALI_ENGINE_API Result {
  std::string text;
  std::vector<int64_t> tokens;  // the generated ids, eos included when generation ended with it
  double score = 0;  // beam search: the length-normalised sum of log-probs; else the sum of log-probs
  bool finished = false;  // ended with eos (false: stopped at max_new_tokens or by a callback)
  Timings timings;
  int image_width = 0, image_height = 0;
  // The boxes of a detection answer ("detect cat ; dog"), or a PaliGemma
  // segmentation answer's boxes, labels and mask codes; empty otherwise.
  std::vector<Object> objects;

  // One JSON object, as `pali-engine run --json` prints it: text, tokens, score, timings.
  std::string to_json() const;
};

// Called with each piece of text as it is generated; return false to stop the generation.
using TextCallback = std::function<bool(std::string_view piece)>;

// ------------------------------------------------------------------ engine

enum class Dtype {
  float32,    // weights in float32
  float16,    // weights rounded to half, float32 arithmetic
  bfloat16,   // weights in bfloat16; float32 arithmetic (prefill with AVX-512 BF16: bfloat16 products)
  int8,       // weights per output channel and activations per row in int8, integer products
  int4,       // weights in int4, one float16 scale per output and group of 32 inputs
  int4_g64,   // int4 weights in groups of 64 inputs
  int4_g128,  // int4 weights in groups of 128 inputs
};
// "float32", "float16", "bfloat16", "int8", "int4", "int4_g64" or "int4_g128";
// Error(invalid_argument) with Python's message otherwise.
PALI_ENGINE_API Dtype dtype_from_name(const std::string& name);
// The name of a dtype, as dtype_from_name() reads it.
PALI_ENGINE_API const char* dtype_name(Dtype dtype);
PALI_ENGINE_API Resize resize_from_name(const std::string& name);

struct LoadOptions {
  // Unset: the file's own dtype when it stores quantized weights (written by
  // `pali-engine convert --dtype int8|int4`), else float32.
  std::optional<Dtype> dtype;
  int threads = 0;  // CPU threads of each call; 0: all cores (OMP_NUM_THREADS)
  Resize resize = Resize::model_default;
};

// A loaded model. Copies share it; its methods may be called from several
// threads at once.
class PALI_ENGINE_API Engine {
 public:
  // The model file checked completely (metadata, config, every tensor,
  // tokenizer) and its weights prepared in `options.dtype`.
  // Error(model_file) names the file and what is wrong with it.
  static Engine load(const std::string& path, const LoadOptions& options = {});

  const std::string& path() const;
  // "pali" or "paligemma".
  const std::string& architecture() const;
  // The file's pali.config, normalised (every field, defaults filled in), as JSON text.
  std::string config_json() const;
  Dtype dtype() const;
  // How this engine makes images square (never model_default).
  Resize resize() const;
  int image_size() const;
  int64_t vocab_size() const;
  int64_t default_max_new_tokens() const;

  // One image and one prompt -> the best sequence (num_return_sequences must be 1).
  Result generate(const Image& image, const std::string& prompt, const GenerateOptions& options = {}) const;
  // One result per input: images[i] with prompts[i], in one batch.
  std::vector<Result> generate(const std::vector<Image>& images, const std::vector<std::string>& prompts,
                               const GenerateOptions& options = {}) const;
  // num_return_sequences results per input.
  std::vector<std::vector<Result>> generate_sequences(const std::vector<Image>& images,
                                                      const std::vector<std::string>& prompts,
                                                      const GenerateOptions& options = {}) const;
  // Calls on_text_piece with the text as it is generated (greedy search and
  // sampling token by token; beam search once, at the end), and returns the
  // result of what was generated; on_text_piece returning false stops the
  // generation after that token.
  Result stream(const Image& image, const std::string& prompt, const GenerateOptions& options,
                const TextCallback& on_text_piece) const;

  // What the model sees, for checks and custom pipelines.
  // The image as the model's input: float32 [3, image_size, image_size].
  std::vector<float> pixel_values(const Image& image) const;
  struct Prompts {
    int64_t batch = 0, length = 0;
    std::vector<int64_t> input_ids;       // [batch, length]
    std::vector<int64_t> attention_mask;  // [batch, length]: 1 for a token, 0 for padding
  };
  // Prompts as the architecture lays them out (eos-terminated and right-padded
  // for "pali"; <image> tokens, <bos>, the prompt and "\n", left-padded for "paligemma").
  Prompts encode_prompts(const std::vector<std::string>& prompts) const;
  // The model's scores (logits) of the first generated token: float32 [vocab_size].
  std::vector<float> first_token_logits(const Image& image, const std::string& prompt) const;
  // Token ids -> text, as the Python tokenizer decodes them (pad skipped, stops at eos).
  std::string decode(const std::vector<int64_t>& tokens) const;
  // The objects of an answer for an image of width x height pixels, as Result::objects has them.
  std::vector<Object> parse_objects(const std::string& text, int width, int height) const;

  struct Impl;

 private:
  explicit Engine(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace pali_engine
