// A config struct's fields as one table, written once per architecture:
// each entry names a field as the file spells it, the member it fills, and
// what the file may hold there (whether it must be given, the range of a
// number, the strings allowed). The struct's own initialisers are the
// defaults. The table
//   parse()     reads a JSON object into the struct, refusing a missing
//               required field, a value of the wrong type or out of range
//               (ConfigError names the field: "field 'vocab_size' must be an
//               integer, got '1586'"); fields it does not list are ignored;
//   to_json()   writes the struct back, every field, defaults filled in: the
//               normalised config Python sees;
//   describe()  lists the fields (name, kind, required, default, range) for
//               Python's docs and tests.
// Relations between fields stay in the config's validate().
#pragma once

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/json.h"

namespace pali {

// A config that cannot be read; the message starts with "field '...'" or "lacks the field(s)".
class ConfigError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

struct FieldRule {
  bool required = false;
  // Integers: the inclusive range.
  int64_t low = std::numeric_limits<int64_t>::min();
  int64_t high = std::numeric_limits<int64_t>::max();
  // Numbers (each number of a list): must be > 0.
  bool positive = false;
  // Strings (each string of a list): the values allowed (empty: any).
  std::vector<std::string> choices;
  // JSON null is accepted and means "off": the member keeps 0 and is written back as null.
  bool nullable = false;
  std::string doc;
};

inline FieldRule required(FieldRule rule = {}) {
  rule.required = true;
  return rule;
}

namespace config_detail {

[[noreturn]] void fail(const std::string& name, const std::string& what, const Json& value);
int64_t read_int(const std::string& name, const Json& value, const FieldRule& rule);
float read_float(const std::string& name, const Json& value, const FieldRule& rule);
bool read_bool(const std::string& name, const Json& value);
std::string read_string(const std::string& name, const Json& value, const FieldRule& rule);
std::vector<float> read_floats(const std::string& name, const Json& value, const FieldRule& rule);
std::vector<std::string> read_strings(const std::string& name, const Json& value, const FieldRule& rule);
Json float_json(float value);
Json describe_rule(const std::string& name, const char* kind, const FieldRule& rule, Json default_value);
const Json& require_object(const Json& value, const std::string& what);

}  // namespace config_detail

template <typename Config>
class ConfigTable {
 public:
  ConfigTable& field(const char* name, int64_t Config::*member, FieldRule rule = {}) {
    return add(name, "int", rule, [member, rule](Config& c, const std::string& n, const Json& v) {
      c.*member = config_detail::read_int(n, v, rule);
    }, [member, rule](const Config& c) {
      return rule.nullable && c.*member == 0 ? Json() : Json::integer(c.*member);
    });
  }
  ConfigTable& field(const char* name, float Config::*member, FieldRule rule = {}) {
    return add(name, "float", rule, [member, rule](Config& c, const std::string& n, const Json& v) {
      c.*member = config_detail::read_float(n, v, rule);
    }, [member, rule](const Config& c) {
      return rule.nullable && c.*member == 0 ? Json() : config_detail::float_json(c.*member);
    });
  }
  ConfigTable& field(const char* name, bool Config::*member, FieldRule rule = {}) {
    return add(name, "bool", rule, [member](Config& c, const std::string& n, const Json& v) {
      c.*member = config_detail::read_bool(n, v);
    }, [member](const Config& c) { return Json::boolean(c.*member); });
  }
  ConfigTable& field(const char* name, std::string Config::*member, FieldRule rule = {}) {
    return add(name, "str", rule, [member, rule](Config& c, const std::string& n, const Json& v) {
      c.*member = config_detail::read_string(n, v, rule);
    }, [member](const Config& c) { return Json::string(c.*member); });
  }
  ConfigTable& field(const char* name, std::vector<float> Config::*member, FieldRule rule = {}) {
    return add(name, "floats", rule, [member, rule](Config& c, const std::string& n, const Json& v) {
      c.*member = config_detail::read_floats(n, v, rule);
    }, [member](const Config& c) {
      Json list = Json::array();
      for (float x : c.*member) list.push(config_detail::float_json(x));
      return list;
    });
  }
  ConfigTable& field(const char* name, std::vector<std::string> Config::*member, FieldRule rule = {}) {
    return add(name, "strs", rule, [member, rule](Config& c, const std::string& n, const Json& v) {
      c.*member = config_detail::read_strings(n, v, rule);
    }, [member](const Config& c) {
      Json list = Json::array();
      for (const auto& s : c.*member) list.push(Json::string(s));
      return list;
    });
  }
  // A nested object (transformers' `text_config`, `vision_config`) read by its own table.
  template <typename Section>
  ConfigTable& section(const char* name, Section Config::*member, const ConfigTable<Section>& table,
                       FieldRule rule = required()) {
    Entry e{name, "object", rule, nullptr, nullptr, nullptr};
    e.read = [member, &table](Config& c, const std::string& n, const Json& v) {
      c.*member = table.parse(config_detail::require_object(v, n), n + ".");
    };
    e.write = [member, &table](const Config& c) { return table.to_json(c.*member); };
    e.absent = [&table](const Json& v, const std::string& prefix, std::vector<std::string>* out) {
      if (v.type() == Json::Type::object) table.absent_fields(v, prefix, out);
    };
    e.describe = [&table]() { return table.describe(); };
    entries_.push_back(std::move(e));
    return *this;
  }

  // `prefix` names a nested object in messages ("text_config.").
  Config parse(const Json& object, const std::string& prefix = "") const {
    if (prefix.empty()) {
      std::vector<std::string> absent;
      absent_fields(object, "", &absent);
      if (!absent.empty()) {
        std::string names;
        for (const auto& n : absent) names += (names.empty() ? "" : ", ") + n;
        throw ConfigError("lacks the field(s) " + names);
      }
    }
    Config config;
    for (const Entry& e : entries_) {
      const Json* value = object.find(e.name);
      if (!value) continue;
      if (value->is_null() && e.rule.nullable) continue;
      e.read(config, prefix + e.name, *value);
    }
    return config;
  }

  Json to_json(const Config& config) const {
    Json out = Json::object();
    for (const Entry& e : entries_) out.set(e.name, e.write(config));
    return out;
  }

  Json describe() const {
    Json fields = Json::array();
    const Config defaults{};
    for (const Entry& e : entries_) {
      Json d = config_detail::describe_rule(e.name, e.kind, e.rule, e.write(defaults));
      if (e.describe) d.set("fields", e.describe());
      fields.push(std::move(d));
    }
    return fields;
  }

  void absent_fields(const Json& object, const std::string& prefix, std::vector<std::string>* out) const {
    for (const Entry& e : entries_) {
      const Json* value = object.find(e.name);
      if (!value && e.rule.required) out->push_back(prefix + e.name);
      if (value && e.absent) e.absent(*value, prefix + e.name + ".", out);
    }
  }

 private:
  struct Entry {
    std::string name;
    const char* kind;
    FieldRule rule;
    std::function<void(Config&, const std::string&, const Json&)> read;
    std::function<Json(const Config&)> write;
    std::function<void(const Json&, const std::string&, std::vector<std::string>*)> absent;
    std::function<Json()> describe;
  };

  template <typename Read, typename Write>
  ConfigTable& add(const char* name, const char* kind, const FieldRule& rule, Read read, Write write) {
    entries_.push_back(Entry{name, kind, rule, read, write, nullptr, nullptr});
    return *this;
  }

  std::vector<Entry> entries_;
};

}  // namespace pali
