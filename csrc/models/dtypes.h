// The engine's dtypes: the names users give (Engine.load(dtype=...), --dtype,
// the C and C++ APIs) and how each stores and multiplies the model's weights.
// Written once here; Python, the command lines and the C++ API read this table.
#pragma once

#include <string>
#include <vector>

#include "ops/linear.h"

namespace pali {

struct EngineDtype {
  const char* name;     // "float32", "int4", ...
  WeightFormat format;  // the linear layers' storage (ops/linear.h); int8 also quantizes activations
  const char* doc;
};

// Every dtype, the default (float32) first.
const std::vector<EngineDtype>& engine_dtypes();
// The dtype named `name`; InvalidArgument "dtype must be one of ..., got 'name'" otherwise.
const EngineDtype& engine_dtype(const std::string& name);
// The dtype a model loads in when none is asked for: the file's own when its
// `pali.weights_dtype` names a quantized one (a file that `pali-engine convert
// --dtype int8|int4` quantized), else float32. `weights_dtype`: that
// metadata's value, or null.
const EngineDtype& default_engine_dtype(const std::string* weights_dtype);
// "float32, float16, ...": the names, for messages and usage lines.
std::string engine_dtype_names(const char* separator = ", ");

}  // namespace pali
