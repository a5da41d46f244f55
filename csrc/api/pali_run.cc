// pali-run: `pali-engine run` without Python.
//
//   pali-run MODEL IMAGE PROMPT [--max-new-tokens N] [--num-beams K] [--dtype D] [--threads T]
//            [--resize pad|stretch] [--json] [--stream] [--objects] [--verbose] [every generation option]
//
// It prints what `pali-engine run --model MODEL IMAGE PROMPT` prints: the
// text, or with --json the same JSON object (text, tokens, score, timings).
// Every generation option of the engine's table is a flag (--top-k 5,
// --do-sample, --early-stopping never, ...), checked by the engine with
// Python's messages. Errors print "pali-run: error: MESSAGE" and exit 1;
// usage errors exit 2, as argparse does.
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "pali_engine/pali_engine.hpp"

namespace {

constexpr const char* kUsage =
    "usage: pali-run [-h] [--dtype DTYPE] [--threads THREADS] [--resize {pad,stretch}]\n"
    "                [--json | --stream] [--objects] [--verbose] [--beams K] [GENERATION OPTIONS]\n"
    "                model image prompt\n";

// "{float32,float16,...}", from the engine's dtype table.
std::string dtype_choices() {
  std::string out = "{";
  for (int i = 0;; ++i) {
    const auto dtype = static_cast<pali_engine::Dtype>(i);
    out += pali_engine::dtype_name(dtype);
    if (dtype == pali_engine::Dtype::int4_g128) break;
    out += ",";
  }
  return out + "}";
}

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << kUsage << "pali-run: error: " << message << "\n";
  std::exit(2);
}

std::string flag_of(const std::string& option) {
  std::string flag = "--" + option;
  for (char& c : flag)
    if (c == '_') c = '-';
  return flag;
}

void print_help() {
  std::cout << kUsage
            << "\ngenerate text for an image and a prompt (pali-engine run without Python)\n\n"
               "positional arguments:\n"
               "  model                 an ONNX model file\n"
               "  image                 an image file (PNG or JPEG)\n"
               "  prompt                a task prompt: \"caption en\", \"answer en how many circles?\", \"ocr\",\n"
               "                        \"detect circle ; square\"\n\n"
               "options:\n"
               "  -h, --help            show this help message and exit\n"
               "  --dtype DTYPE         weight storage of the native engine, one of\n"
               "                        " << dtype_choices() << "\n"
               "                        (default: the file's own when it is quantized, else\n"
               "                        float32)\n"
               "  --threads THREADS     CPU threads (default: all cores)\n"
               "  --resize {pad,stretch}\n"
               "                        how a non-square image becomes square (default: the model's convention)\n"
               "  --json                print one JSON object per sequence\n"
               "  --stream              print the text as it is generated\n"
               "  --objects             then print the boxes of a detection or segmentation answer,\n"
               "                        one per line: x0 y0 x1 y1 label (the image's pixels)\n"
               "  --verbose             print the load and generation times to stderr\n"
               "  --beams K             the same as --num-beams K\n\n"
               "generation options (the engine's; default in brackets):\n";
  for (const auto& spec : pali_engine::generation_option_specs()) {
    std::string flag = flag_of(spec.name);
    if (spec.kind != "bool") flag += spec.kind == "early_stopping" ? " {true,false,never}" : " VALUE";
    std::cout << "  " << flag << (flag.size() < 20 ? std::string(20 - flag.size(), ' ') : "\n                      ")
              << "  " << spec.doc << " [" << spec.default_value << "]\n";
  }
}

// A flag's value as the option's kind takes it; text that is no value of that kind is a usage error.
pali_engine::OptionValue option_value(const pali_engine::OptionSpec& spec, const std::string& flag,
                                      const std::string& text) {
  const auto invalid = [&](const char* kind) {
    usage_error("argument " + flag + ": invalid " + kind + " value: '" + text + "'");
  };
  errno = 0;
  char* end = nullptr;
  if (spec.kind == "int" || spec.kind == "seed") {
    if (text.empty()) invalid("int");
    if (spec.kind == "seed" && text[0] != '-') {
      const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
      if (*end != '\0' || errno == ERANGE) invalid("int");
      return static_cast<uint64_t>(value);
    }
    const long long value = std::strtoll(text.c_str(), &end, 10);
    if (*end != '\0' || errno == ERANGE) invalid("int");
    return static_cast<int64_t>(value);
  }
  if (spec.kind == "float") {
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') invalid("float");
    return value;
  }
  if (text == "true" || text == "True") return true;
  if (text == "false" || text == "False") return false;
  return text;  // early_stopping's "never"; anything else is refused by the engine
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  pali_engine::LoadOptions load;
  pali_engine::GenerateOptions options;
  bool json = false, stream = false, objects = false, verbose = false;
  const auto specs = pali_engine::generation_option_specs();
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      const auto value = [&]() -> std::string {
        if (i + 1 >= argc) usage_error("argument " + arg + ": expected one argument");
        return argv[++i];
      };
      if (arg == "-h" || arg == "--help") {
        print_help();
        return 0;
      }
      if (arg == "--json") {
        json = true;
      } else if (arg == "--stream") {
        stream = true;
      } else if (arg == "--objects") {
        objects = true;
      } else if (arg == "--verbose") {
        verbose = true;
      } else if (arg == "--dtype") {
        load.dtype = pali_engine::dtype_from_name(value());
      } else if (arg == "--resize") {
        load.resize = pali_engine::resize_from_name(value());
      } else if (arg == "--threads") {
        const std::string text = value();
        char* end = nullptr;
        const long threads = std::strtol(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0') usage_error("argument --threads: invalid int value: '" + text + "'");
        // Python's check_threads: None (not given) is all cores, an int must be in [1, 4096].
        if (threads < 1 || threads > 4096)
          throw pali_engine::Error(pali_engine::ErrorKind::invalid_argument,
                                   "threads must be an integer between 1 and 4096, or None for all cores, got " +
                                       text);
        load.threads = static_cast<int>(threads);
      } else if (arg.rfind("--", 0) == 0) {
        // --beams: pali-engine run's name of --num-beams.
        const std::string flag = arg == "--beams" ? "--num-beams" : arg;
        const pali_engine::OptionSpec* spec = nullptr;
        for (const auto& s : specs)
          if (flag_of(s.name) == flag) spec = &s;
        if (!spec) usage_error("unrecognized arguments: " + arg);
        if (spec->kind == "bool") options.set(spec->name, true);
        else options.set(spec->name, option_value(*spec, arg, value()));
      } else {
        positional.push_back(arg);
      }
    }
    if (positional.size() < 3) {
      static const char* names[] = {"model", "image", "prompt"};
      std::string missing;
      for (size_t k = positional.size(); k < 3; ++k) missing += (missing.empty() ? "" : ", ") + std::string(names[k]);
      usage_error("the following arguments are required: " + missing);
    }
    if (positional.size() > 3) usage_error("unrecognized arguments: " + positional[3]);
    if (json && stream) usage_error("argument --stream: not allowed with argument --json");

    using Clock = std::chrono::steady_clock;
    const auto ms_since = [](Clock::time_point start) {
      return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    };
    auto start = Clock::now();
    const pali_engine::Engine engine = pali_engine::Engine::load(positional[0], load);
    if (verbose)
      std::fprintf(stderr, "pali-run: loaded %s (%s) in %.1f ms\n", positional[0].c_str(),
                   engine.architecture().c_str(), ms_since(start));
    start = Clock::now();
    const pali_engine::Image image = pali_engine::Image::from_file(positional[1]);
    if (verbose) std::fprintf(stderr, "pali-run: read %s in %.1f ms\n", positional[1].c_str(), ms_since(start));
    std::vector<pali_engine::Result> results;
    if (stream) {
      results.push_back(engine.stream(image, positional[2], options, [](std::string_view piece) {
        std::cout.write(piece.data(), static_cast<std::streamsize>(piece.size()));
        std::cout.flush();
        return true;
      }));
      std::cout << "\n";
    } else {
      results = std::move(engine.generate_sequences({image}, {positional[2]}, options).front());
      for (const auto& result : results) std::cout << (json ? result.to_json() : result.text) << "\n";
    }
    std::cout.flush();
    if (verbose)
      for (const auto& result : results) {
        const auto& t = result.timings;
        std::fprintf(stderr,
                     "pali-run: preprocess %.1f ms, vision %.1f ms, encoder %.1f ms, first token %.1f ms, "
                     "%lld decoding steps %.1f ms, total %.1f ms\n",
                     t.preprocess_ms, t.vision_ms, t.encoder_ms, t.first_token_ms, static_cast<long long>(t.steps),
                     t.decode_ms, t.total_ms);
      }
    if (objects)
      for (const auto& result : results)
        for (const auto& o : result.objects) {
          std::printf("%.1f %.1f %.1f %.1f %s", o.x0, o.y0, o.x1, o.y1, o.label.c_str());
          for (const int code : o.codes) std::printf(" %d", code);
          std::printf("\n");
        }
    return 0;
  } catch (const std::exception& error) {
    std::cout.flush();
    std::cerr << "pali-run: error: " << error.what() << "\n";
    return 1;
  }
}
