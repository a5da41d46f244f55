#include "models/architectures.h"

#include "core/config_table.h"
#include "models/pali_model.h"
#include "models/paligemma_model.h"

namespace pali {
namespace {

// One registry entry from an architecture's config type and model class.
template <typename Config, typename ModelClass>
Architecture entry(std::string name, std::string description, const ConfigTable<Config>& (*table)()) {
  Architecture a;
  a.name = std::move(name);
  a.description = std::move(description);
  a.check_config = [](const Json& config) { return Config::from_json(config).to_json(); };
  a.expected_tensors = [](const Json& config) { return ModelClass::expected_tensors(Config::from_json(config)); };
  a.load = [](std::shared_ptr<const onnx::OnnxFile> file, const Json& config, WeightFormat format) {
    return std::shared_ptr<const Model>(std::make_shared<const ModelClass>(file, Config::from_json(config), format));
  };
  a.config_fields = [table]() { return table().describe(); };
  return a;
}

}  // namespace

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> registry = {
      entry<PaliConfig, PaliModel>("pali", "ViT -> T5 encoder -> T5 decoder (pali-engine's own models)",
                                   &pali_config_table),
      entry<PaliGemmaConfig, PaliGemmaModel>(
          "paligemma", "SigLIP -> projector -> Gemma / Gemma 2 decoder (PaliGemma 1 and 2)", &paligemma_config_table),
  };
  return registry;
}

const Architecture& architecture_of(const Json& config) {
  if (config.type() != Json::Type::object)
    throw ConfigError(str_cat("is not a JSON object, got ", config.describe()));
  std::string known;
  for (const auto& a : architectures()) known += (known.empty() ? "'" : ", '") + a.name + "'";
  const Json* name = config.find("architecture");
  if (!name) throw ConfigError("lacks the field(s) architecture");
  if (name->type() != Json::Type::string)
    throw ConfigError(str_cat("field 'architecture' must be a string, got ", name->describe()));
  for (const auto& a : architectures())
    if (a.name == name->as_string()) return a;
  throw ConfigError(str_cat("architecture ", name->describe(), " is not supported by this version (it reads ", known,
                            ")"));
}

std::shared_ptr<const Model> load_model(std::shared_ptr<const onnx::OnnxFile> file, WeightFormat format) {
  const std::string* text = file->find_metadata("pali.config");
  if (!text) throw ModelFileError(str_cat(file->path(), ": no 'pali.config' metadata; not a pali-engine model"));
  Json config;
  try {
    config = Json::parse(*text);
    const Architecture& architecture = architecture_of(config);
    return architecture.load(file, config, format);
  } catch (const ConfigError& error) {
    throw ModelFileError(str_cat(file->path(), ": 'pali.config' ", error.what()));
  } catch (const JsonError& error) {
    throw ModelFileError(str_cat(file->path(), ": 'pali.config' metadata is ", error.what()));
  }
}

}  // namespace pali
