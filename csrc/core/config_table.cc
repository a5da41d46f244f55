#include "core/config_table.h"

#include <charconv>

namespace pali::config_detail {

namespace {

// `label` is the field as the message shows it: 'image_mean', or 'image_mean'[2] for an item.
[[noreturn]] void fail_label(const std::string& label, const std::string& what, const Json& value) {
  throw ConfigError(str_cat("field ", label, " ", what, ", got ", value.describe()));
}

std::string quoted(const std::string& name) { return "'" + name + "'"; }

float read_float_labelled(const std::string& label, const Json& value, const FieldRule& rule) {
  if (!value.is_number()) fail_label(label, "must be a number", value);
  const double number = value.as_double();
  // The engine holds config numbers in float32: a value that overflows it is refused.
  const float rounded = std::isfinite(number) && std::fabs(number) <= std::numeric_limits<float>::max()
                            ? static_cast<float>(number)
                            : std::numeric_limits<float>::infinity();
  if (!std::isfinite(rounded)) fail_label(label, "must be a finite number (float32)", value);
  if (rule.positive && !(rounded > 0)) fail_label(label, "must be > 0", value);
  return rounded;
}

}  // namespace

void fail(const std::string& name, const std::string& what, const Json& value) {
  fail_label(quoted(name), what, value);
}

int64_t read_int(const std::string& name, const Json& value, const FieldRule& rule) {
  if (value.type() != Json::Type::integer && !(value.type() == Json::Type::number && value.big_integer()))
    fail(name, "must be an integer", value);
  if (value.big_integer() || value.as_int() < rule.low || value.as_int() > rule.high) {
    if (rule.low == rule.high) fail(name, str_cat("must be ", rule.low), value);
    fail(name, str_cat("must be between ", rule.low, " and ", rule.high), value);
  }
  return value.as_int();
}

float read_float(const std::string& name, const Json& value, const FieldRule& rule) {
  return read_float_labelled(quoted(name), value, rule);
}

bool read_bool(const std::string& name, const Json& value) {
  if (value.type() != Json::Type::boolean) fail(name, "must be true or false", value);
  return value.as_bool();
}

std::string one_of(const std::vector<std::string>& choices) {
  std::string out;
  for (const auto& c : choices) out += (out.empty() ? "'" : ", '") + c + "'";
  return out;
}

std::string read_string(const std::string& name, const Json& value, const FieldRule& rule) {
  if (value.type() != Json::Type::string) fail(name, "must be a string", value);
  if (!rule.choices.empty()) {
    bool allowed = false;
    for (const auto& c : rule.choices) allowed |= c == value.as_string();
    if (!allowed) fail(name, "must be one of " + one_of(rule.choices), value);
  }
  return value.as_string();
}

std::vector<float> read_floats(const std::string& name, const Json& value, const FieldRule& rule) {
  if (value.type() != Json::Type::array) fail(name, "must be a list of numbers", value);
  std::vector<float> out;
  for (size_t i = 0; i < value.items().size(); ++i)
    out.push_back(read_float_labelled(str_cat(quoted(name), "[", i, "]"), value.items()[i], rule));
  return out;
}

std::vector<std::string> read_strings(const std::string& name, const Json& value, const FieldRule& rule) {
  if (value.type() != Json::Type::array) fail(name, "must be a list of strings", value);
  std::vector<std::string> out;
  for (const Json& item : value.items()) out.push_back(read_string(name, item, rule));
  return out;
}

Json float_json(float value) {
  // The shortest decimal that reads back as this float32 (1e-06, not 9.99999997e-07), as a double.
  char buffer[32];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  double number = value;
  if (error == std::errc()) std::from_chars(buffer, end, number);
  return Json::number(number);
}

Json describe_rule(const std::string& name, const char* kind, const FieldRule& rule, Json default_value) {
  Json d = Json::object();
  d.set("name", Json::string(name));
  d.set("kind", Json::string(kind));
  d.set("required", Json::boolean(rule.required));
  d.set("default", rule.required ? Json() : std::move(default_value));
  if (rule.low != std::numeric_limits<int64_t>::min()) d.set("low", Json::integer(rule.low));
  if (rule.high != std::numeric_limits<int64_t>::max()) d.set("high", Json::integer(rule.high));
  if (rule.positive) d.set("positive", Json::boolean(true));
  if (rule.nullable) d.set("nullable", Json::boolean(true));
  if (!rule.choices.empty()) {
    Json choices = Json::array();
    for (const auto& c : rule.choices) choices.push(Json::string(c));
    d.set("choices", std::move(choices));
  }
  if (!rule.doc.empty()) d.set("doc", Json::string(rule.doc));
  return d;
}

const Json& require_object(const Json& value, const std::string& what) {
  if (value.type() != Json::Type::object) fail(what, "must be an object", value);
  return value;
}

}  // namespace pali::config_detail
