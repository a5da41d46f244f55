// The architecture registry: `pali.config["architecture"]` names an entry,
// and the entry knows that architecture's config table, the tensors its files
// hold, and how to load its model. Adding an architecture is one entry here
// plus its model file (docs/architecture.md).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/json.h"
#include "models/model.h"
#include "models/weights.h"
#include "onnx/onnx_file.h"
#include "ops/linear.h"

namespace pali {

struct Architecture {
  std::string name;
  std::string description;
  // The config as the file holds it -> normalised (every field, defaults filled
  // in), or ConfigError naming the field.
  std::function<Json(const Json& config)> check_config;
  // The tensors a file of this (checked) config must hold.
  std::function<std::vector<TensorSpec>(const Json& config)> expected_tensors;
  // The model on the file's weights, prepared in `format`.
  std::function<std::shared_ptr<const Model>(std::shared_ptr<const onnx::OnnxFile> file, const Json& config,
                                             WeightFormat format)>
      load;
  // The config table, described (ConfigTable::describe).
  std::function<Json()> config_fields;
};

const std::vector<Architecture>& architectures();

// The entry `config["architecture"]` names; ConfigError when the config is not an
// object, names no architecture, or one this build does not have.
const Architecture& architecture_of(const Json& config);

// The model of a file: its metadata's `pali.config` read, checked and loaded by
// its architecture. ModelFileError names the file.
std::shared_ptr<const Model> load_model(std::shared_ptr<const onnx::OnnxFile> file, WeightFormat format);

}  // namespace pali
