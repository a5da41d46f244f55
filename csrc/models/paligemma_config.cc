#include "models/paligemma_config.h"

#include <cmath>

#include "core/error.h"
#include "models/config_rules.h"

namespace pali {
namespace {

using namespace config_rules;

const std::vector<std::string> kTanhGelu = {"gelu_pytorch_tanh", "gelu_new"};

const ConfigTable<SiglipConfig>& siglip_table() {
  using C = SiglipConfig;
  static const ConfigTable<C> table = [] {
    ConfigTable<C> t;
    t.field("model_type", &C::model_type)
        .field("hidden_size", &C::hidden_size, size(kMaxWidth))
        .field("intermediate_size", &C::intermediate_size, size(kMaxWidth))
        .field("num_hidden_layers", &C::num_hidden_layers, size(kMaxLayers))
        .field("num_attention_heads", &C::num_attention_heads, size(kMaxHeads))
        .field("num_channels", &C::num_channels, size(3, false, 3))  // images are RGB
        .field("image_size", &C::image_size, size(kMaxImageSize))
        .field("patch_size", &C::patch_size, size(kMaxImageSize))
        .field("layer_norm_eps", &C::layer_norm_eps, positive())
        .field("hidden_act", &C::hidden_act, one_of(kTanhGelu, false));
    return t;
  }();
  return table;
}

const ConfigTable<GemmaConfig>& gemma_table() {
  using C = GemmaConfig;
  static const ConfigTable<C> table = [] {
    ConfigTable<C> t;
    t.field("model_type", &C::model_type, one_of({"gemma", "gemma2"}, true))
        .field("vocab_size", &C::vocab_size, size(kMaxVocab))
        .field("hidden_size", &C::hidden_size, size(kMaxWidth))
        .field("intermediate_size", &C::intermediate_size, size(kMaxWidth))
        .field("num_hidden_layers", &C::num_hidden_layers, size(kMaxLayers))
        .field("num_attention_heads", &C::num_attention_heads, size(kMaxHeads))
        .field("num_key_value_heads", &C::num_key_value_heads, size(kMaxHeads))
        .field("head_dim", &C::head_dim, size(kMaxHeadDim))
        .field("max_position_embeddings", &C::max_position_embeddings, size(kMaxTokens * 64, false))
        .field("pad_token_id", &C::pad_token_id, token_id(kMaxVocab, false))
        .field("eos_token_id", &C::eos_token_id, token_id(kMaxVocab, false))
        .field("bos_token_id", &C::bos_token_id, token_id(kMaxVocab, false))
        .field("rms_norm_eps", &C::rms_norm_eps, positive())
        .field("rope_theta", &C::rope_theta, positive())
        .field("hidden_act", &C::hidden_act, one_of(kTanhGelu, false))
        .field("hidden_activation", &C::hidden_activation, one_of(kTanhGelu, false))
        .field("query_pre_attn_scalar", &C::query_pre_attn_scalar, positive(false, true))
        .field("attn_logit_softcapping", &C::attn_logit_softcapping, positive(false, true))
        .field("final_logit_softcapping", &C::final_logit_softcapping, positive(false, true))
        .field("sliding_window", &C::sliding_window, [] {
          FieldRule r = size(kMaxTokens * 64, false);
          r.nullable = true;
          return r;
        }())
        .field("layer_types", &C::layer_types, one_of({"sliding_attention", "full_attention"}, false));
    return t;
  }();
  return table;
}

[[noreturn]] void relation(const std::string& message) { throw ConfigError(message); }

}  // namespace

const ConfigTable<PaliGemmaConfig>& paligemma_config_table() {
  using C = PaliGemmaConfig;
  static const ConfigTable<C> table = [] {
    ConfigTable<C> t;
    t.field("architecture", &C::architecture, one_of({"paligemma"}, true))
        .field("model_type", &C::model_type, one_of({"paligemma"}, false))
        .field("paligemma_version", &C::paligemma_version, size(2, false))
        .field("image_token_index", &C::image_token_index, size(kMaxVocab - 1, true, 0))
        .field("projection_dim", &C::projection_dim, size(kMaxWidth))
        .field("tie_word_embeddings", &C::tie_word_embeddings)
        .field("num_image_tokens", &C::num_image_tokens, size(kMaxTokens))
        .field("vocab_size", &C::vocab_size, size(kMaxVocab, false))
        .field("pad_token_id", &C::pad_token_id, token_id(kMaxVocab, false))
        .field("bos_token_id", &C::bos_token_id, token_id(kMaxVocab, false))
        .field("eos_token_id", &C::eos_token_id, token_id(kMaxVocab, false))
        .field("image_size", &C::image_size, size(kMaxImageSize))
        .field("resample", &C::resample, one_of({"bilinear", "bicubic", "nearest", "lanczos"}, true))
        .field("rescale_factor", &C::rescale_factor, positive(true))
        .field("image_mean", &C::image_mean, required())
        .field("image_std", &C::image_std, positive(true))
        .field("do_convert_rgb", &C::do_convert_rgb)
        .field("max_new_tokens", &C::max_new_tokens, size(kMaxTokens, false))
        .section("text_config", &C::text, gemma_table())
        .section("vision_config", &C::vision, siglip_table());
    return t;
  }();
  return table;
}

PaliGemmaConfig PaliGemmaConfig::from_json(const Json& config) {
  PaliGemmaConfig c = paligemma_config_table().parse(config);
  // Files that predate the top-level vocabulary size take the decoder's.
  if (!config.find("vocab_size")) c.vocab_size = c.text.vocab_size;
  c.validate();
  return c;
}

Json PaliGemmaConfig::to_json() const { return paligemma_config_table().to_json(*this); }

void PaliGemmaConfig::validate() const {
  paligemma_config_table().parse(to_json());
  if (vision.image_size % vision.patch_size)
    relation(str_cat("field 'vision_config.image_size' (", vision.image_size, ") must be a multiple of patch_size (",
                     vision.patch_size, ")"));
  if (vision.hidden_size % vision.num_attention_heads)
    relation("field 'vision_config.hidden_size' must be a multiple of num_attention_heads");
  if (image_size != vision.image_size)
    relation(str_cat("field 'image_size' (", image_size, ") must equal vision_config.image_size (",
                     vision.image_size, ")"));
  if (text.head_dim % 2) relation("field 'text_config.head_dim' must be even (RoPE)");
  if (text.num_attention_heads % text.num_key_value_heads)
    relation("field 'text_config.num_key_value_heads' must divide num_attention_heads");
  if (!(text.rope_theta > 1)) relation("field 'text_config.rope_theta' must be > 1");
  if (!text.layer_types.empty() && static_cast<int64_t>(text.layer_types.size()) != text.num_hidden_layers)
    relation(str_cat("field 'text_config.layer_types' needs one entry per layer (", text.num_hidden_layers, ")"));
  if (projection_dim != text.hidden_size)
    relation(str_cat("field 'projection_dim' (", projection_dim, ") must equal text_config.hidden_size (",
                     text.hidden_size, ")"));
  if (num_image_tokens != vision.num_patches())
    relation(str_cat("field 'num_image_tokens' (", num_image_tokens, ") must be (image_size / patch_size)^2 = ",
                     vision.num_patches()));
  if (vocab_size != text.vocab_size)
    relation(str_cat("field 'vocab_size' (", vocab_size, ") must equal text_config.vocab_size (", text.vocab_size,
                     ")"));
  for (const auto& [name, values] : {std::pair{"image_mean", &image_mean}, std::pair{"image_std", &image_std}})
    if (static_cast<int64_t>(values->size()) != vision.num_channels)
      relation(str_cat("field '", name, "' must have one value per channel (", vision.num_channels, "), got ",
                       values->size()));
  for (const auto& [name, id] : {std::pair{"pad_token_id", pad_token_id}, std::pair{"eos_token_id", eos_token_id},
                                 std::pair{"bos_token_id", bos_token_id},
                                 std::pair{"image_token_index", image_token_index}})
    if (id >= text.vocab_size)
      relation(str_cat("field '", name, "' (", id, ") must be below text_config.vocab_size (", text.vocab_size, ")"));
}

}  // namespace pali
