#include "generate/generation_options.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace pali {
namespace {

constexpr int64_t kMaxLength = int64_t{1} << 40;  // a longer request is left to the memory check
constexpr int64_t kMaxCount = std::numeric_limits<int32_t>::max();

[[noreturn]] void bad(const std::string& name, const std::string& what, const OptionValue& value) {
  throw InvalidArgument(str_cat(name, " must be ", what, ", got ", value.repr));
}

int64_t read_integer(const OptionSpec& spec, const OptionValue& value) {
  if (value.type != OptionValue::Type::integer) bad(spec.name, "an integer", value);
  if (!value.fits_int64 || value.integer < spec.low || value.integer > spec.high)
    bad(spec.name, str_cat("between ", spec.low, " and ", spec.high), value);
  return value.integer;
}

float read_number(const OptionSpec& spec, const OptionValue& value) {
  double number = 0;
  if (value.type == OptionValue::Type::number) number = value.number;
  else if (value.type == OptionValue::Type::integer) number = value.fits_int64 ? value.integer : HUGE_VAL;
  else bad(spec.name, "a finite number (float32)", value);
  // The engine holds float options in float32.
  if (!std::isfinite(number) || std::fabs(number) > std::numeric_limits<float>::max())
    bad(spec.name, "a finite number (float32)", value);
  return static_cast<float>(number);
}

}  // namespace

const std::vector<OptionSpec>& generation_option_specs() {
  using K = OptionKind;
  static const std::vector<OptionSpec> specs = {
      {"max_new_tokens", K::integer, "None", 1, kMaxLength, "tokens to generate at most (None: the model's default)"},
      {"min_new_tokens", K::integer, "0", 0, kMaxLength, "eos is banned before this many tokens"},
      {"num_beams", K::integer, "1", 1, kMaxCount, "beam search with this many beams (1: greedy or sampling)"},
      {"length_penalty", K::number, "1.0", 0, 0,
       "beam search: a finished hypothesis scores sum_logprobs / length ** length_penalty"},
      {"early_stopping", K::early_stopping, "False", 0, 0,
       "beam search: True stops at num_beams finished hypotheses; False when no running beam can beat them "
       "at the current length; 'never' at the longest length"},
      {"num_return_sequences", K::integer, "1", 1, kMaxCount,
       "sequences returned per input (beam search: the best, at most num_beams; sampling: independent samples)"},
      {"no_repeat_ngram_size", K::integer, "0", 0, kMaxCount, "no n-gram of this size occurs twice (0: off)"},
      {"repetition_penalty", K::number, "1.0", 0, 0,
       "scores of tokens already in the sequence are divided (positive) or multiplied (negative) by it"},
      {"do_sample", K::boolean, "False", 0, 0, "sample the next token instead of taking the best"},
      {"temperature", K::number, "1.0", 0, 0, "sampling: scores are divided by it"},
      {"top_k", K::integer, "50", 0, kMaxCount, "sampling: only the k best tokens (0: all)"},
      {"top_p", K::number, "1.0", 0, 0, "sampling: only the smallest set of tokens whose probability reaches p"},
      {"seed", K::seed, "None", 0, 0, "sampling: the random generator's seed (None: a fresh one per call)"},
  };
  return specs;
}

GenerationOptions parse_generation_options(const std::vector<std::pair<std::string, OptionValue>>& options,
                                           int64_t default_max_new_tokens) {
  const auto& specs = generation_option_specs();
  std::string unknown;
  for (const auto& [name, value] : options) {
    bool known = false;
    for (const auto& spec : specs) known |= spec.name == name;
    if (!known) unknown += (unknown.empty() ? "" : ", ") + name;
  }
  if (!unknown.empty()) {
    std::string names;
    for (const auto& spec : specs) names += (names.empty() ? "" : ", ") + spec.name;
    throw InvalidArgument(str_cat("unknown generation option(s): ", unknown, "; known options: ", names));
  }
  GenerationOptions o;
  o.max_new_tokens = default_max_new_tokens;
  for (const auto& [name, value] : options) {
    const OptionSpec* spec = nullptr;
    for (const auto& s : specs)
      if (s.name == name) spec = &s;
    if (name == "max_new_tokens" && value.type == OptionValue::Type::none) continue;
    switch (spec->kind) {
      case OptionKind::integer: {
        const int64_t v = read_integer(*spec, value);
        if (name == "max_new_tokens") o.max_new_tokens = v;
        else if (name == "min_new_tokens") o.min_new_tokens = v;
        else if (name == "num_beams") o.num_beams = v;
        else if (name == "num_return_sequences") o.num_return_sequences = v;
        else if (name == "no_repeat_ngram_size") o.no_repeat_ngram_size = v;
        else if (name == "top_k") o.top_k = v;
        break;
      }
      case OptionKind::number: {
        const float v = read_number(*spec, value);
        if (name == "length_penalty") o.length_penalty = v;
        else if (name == "repetition_penalty") o.repetition_penalty = v;
        else if (name == "temperature") o.temperature = v;
        else if (name == "top_p") o.top_p = v;
        break;
      }
      case OptionKind::boolean:
        if (value.type != OptionValue::Type::boolean) bad(name, "True or False", value);
        o.do_sample = value.boolean;
        break;
      case OptionKind::early_stopping:
        if (value.type == OptionValue::Type::boolean)
          o.early_stopping = value.boolean ? EarlyStopping::on : EarlyStopping::heuristic;
        else if (value.type == OptionValue::Type::string && value.string == "never")
          o.early_stopping = EarlyStopping::never;
        else
          bad(name, "True, False or 'never'", value);
        break;
      case OptionKind::seed:
        if (value.type == OptionValue::Type::none) break;
        if (value.type != OptionValue::Type::integer) bad(name, "an integer", value);
        if (value.fits_int64 && value.integer >= 0) o.seed = static_cast<uint64_t>(value.integer);
        else if (value.fits_uint64) o.seed = value.unsigned_value;
        else bad(name, "between 0 and 18446744073709551615", value);
        o.has_seed = true;
        break;
    }
  }
  o.validate();
  return o;
}

void GenerationOptions::validate() const {
  PALI_CHECK_ARG(max_new_tokens > 0, "max_new_tokens must be positive, got ", max_new_tokens);
  // Above max_new_tokens it bans eos for the whole generation, as in transformers.
  PALI_CHECK_ARG(min_new_tokens >= 0, "min_new_tokens must be >= 0, got ", min_new_tokens);
  PALI_CHECK_ARG(num_beams >= 1, "num_beams must be at least 1, got ", num_beams);
  PALI_CHECK_ARG(num_return_sequences >= 1, "num_return_sequences must be at least 1, got ", num_return_sequences);
  PALI_CHECK_ARG(no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0, got ", no_repeat_ngram_size);
  PALI_CHECK_ARG(std::isfinite(length_penalty), "length_penalty must be finite");
  PALI_CHECK_ARG(top_k >= 0, "top_k must be >= 0, got ", top_k);
  PALI_CHECK_ARG(std::isfinite(repetition_penalty) && repetition_penalty > 0,
                 "repetition_penalty must be > 0, got ", repetition_penalty);
  PALI_CHECK_ARG(std::isfinite(temperature) && temperature >= 0,
                 "temperature must be >= 0 (> 0 when sampling), got ", temperature);
  PALI_CHECK_ARG(!do_sample || temperature > 0,
                 "temperature must be > 0 when do_sample=True (use do_sample=False for greedy)");
  PALI_CHECK_ARG(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
  PALI_CHECK_ARG(!(do_sample && num_beams > 1), "do_sample=True with num_beams > 1 (beam sampling) is not supported");
  PALI_CHECK_ARG(do_sample || num_return_sequences <= num_beams, "num_return_sequences (", num_return_sequences,
                 ") must be <= num_beams (", num_beams, ") unless do_sample=True");
}

}  // namespace pali
