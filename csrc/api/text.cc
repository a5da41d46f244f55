// The tokenizer and the prompt layouts of the C++ API (text.h).
#include "api/text.h"

#include <sentencepiece_processor.h>

#include "api/python_format.h"
#include "core/error.h"

namespace pali::api {
namespace {

// SentencePiece is given UTF-8, as every Python str encodes to.
void check_utf8(const std::string& prompt, size_t index, const char* what) {
  const size_t bad = utf8_error_offset(prompt);
  if (bad != std::string_view::npos) throw InvalidArgument(str_cat("prompt ", index, what, bad, ")"));
}

}  // namespace

Tokenizer::Tokenizer(const std::string& model_bytes) : processor_(new sentencepiece::SentencePieceProcessor()) {
  const auto status = processor_->LoadFromSerializedProto(model_bytes);
  if (!status.ok()) throw InvalidArgument(str_cat("not a SentencePiece model: ", status.ToString()));
  pieces_ = processor_->GetPieceSize();
}

Tokenizer::~Tokenizer() = default;

int64_t Tokenizer::unk_id() const { return processor_->unk_id(); }
int64_t Tokenizer::bos_id() const { return processor_->bos_id(); }
int64_t Tokenizer::eos_id() const { return processor_->eos_id(); }
int64_t Tokenizer::pad_id() const { return processor_->pad_id(); }
int64_t Tokenizer::piece_to_id(std::string_view piece) const { return processor_->PieceToId(piece); }

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = processor_->Encode(text, &ids);
  if (!status.ok()) throw RuntimeFailure(str_cat("SentencePiece cannot encode the text: ", status.ToString()));
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, int64_t pad_id, int64_t eos_id) const {
  std::vector<int> kept;
  for (const int64_t id : ids) {
    if (id == eos_id) break;
    if (id == pad_id || id < 0 || id >= pieces_) continue;
    kept.push_back(static_cast<int>(id));
  }
  std::string text;
  const auto status = processor_->Decode(kept, &text);
  if (!status.ok()) throw RuntimeFailure(str_cat("SentencePiece cannot decode the tokens: ", status.ToString()));
  return text;
}

EncodedPrompts encode_pali_prompts(const Tokenizer& tokenizer, const std::vector<std::string>& prompts,
                                   const PaliPromptLayout& layout) {
  std::vector<std::vector<int64_t>> rows;
  for (size_t i = 0; i < prompts.size(); ++i) {
    check_utf8(prompts[i], i, ": text is not valid UTF-8 (at byte ");
    std::vector<int64_t> ids = tokenizer.encode(prompts[i]);
    ids.push_back(layout.eos_id);
    if (static_cast<int64_t>(ids.size()) > layout.max_prompt_tokens)
      throw InvalidArgument(str_cat("prompt ", i, " is ", ids.size(), " tokens long (eos included); this model takes at most ",
                                    layout.max_prompt_tokens, " (max_prompt_tokens)"));
    rows.push_back(std::move(ids));
  }
  EncodedPrompts out;
  out.batch = static_cast<int64_t>(rows.size());
  for (const auto& row : rows) out.length = std::max<int64_t>(out.length, static_cast<int64_t>(row.size()));
  out.input_ids.assign(out.batch * out.length, layout.pad_id);
  out.attention_mask.assign(out.batch * out.length, 0);
  for (int64_t b = 0; b < out.batch; ++b)
    for (size_t t = 0; t < rows[b].size(); ++t) {
      out.input_ids[b * out.length + t] = rows[b][t];
      out.attention_mask[b * out.length + t] = 1;
    }
  return out;
}

namespace {

// The length of the added token PaliGemma's tokenizer matches at text[i]
// (<image>, <bos>, <eos>, <pad>, <unk>, <mask>, <locNNNN>, <segNNN>), or 0.
size_t special_token_at(std::string_view text, size_t i) {
  static const std::string_view names[] = {"<image>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>"};
  const std::string_view rest = text.substr(i);
  for (const auto name : names)
    if (rest.substr(0, name.size()) == name) return name.size();
  const auto numbered = [&](std::string_view prefix, size_t digits) -> size_t {
    const size_t length = prefix.size() + digits + 1;
    if (rest.size() < length || rest.substr(0, prefix.size()) != prefix || rest[length - 1] != '>') return 0;
    for (size_t k = prefix.size(); k < length - 1; ++k)
      if (rest[k] < '0' || rest[k] > '9') return 0;
    return length;
  };
  if (const size_t n = numbered("<loc", 4)) return n;
  return numbered("<seg", 3);
}

std::vector<int64_t> tokenize_paligemma(const Tokenizer& tokenizer, std::string_view text,
                                        int64_t image_token_index) {
  std::vector<int64_t> ids;
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t length = text[i] == '<' ? special_token_at(text, i) : 0;
    if (length == 0) {
      ++i;
      continue;
    }
    const std::string_view token = text.substr(i, length);
    int64_t id = -1;
    if (token == "<image>") {
      id = image_token_index;
    } else {
      id = tokenizer.piece_to_id(token);
      if (id == tokenizer.unk_id() && token != "<unk>") id = -1;  // not in this vocabulary: plain text
    }
    if (id >= 0) {
      if (i > start) {
        const auto piece = tokenizer.encode(text.substr(start, i - start));
        ids.insert(ids.end(), piece.begin(), piece.end());
      }
      ids.push_back(id);
      start = i + length;
    }
    i += length;
  }
  if (start < text.size()) {
    const auto piece = tokenizer.encode(text.substr(start));
    ids.insert(ids.end(), piece.begin(), piece.end());
  }
  return ids;
}

}  // namespace

EncodedPrompts encode_paligemma_prompts(const Tokenizer& tokenizer, const std::vector<std::string>& prompts,
                                        const PaliGemmaPromptLayout& layout) {
  constexpr std::string_view kImage = "<image>";
  for (size_t i = 0; i < prompts.size(); ++i) check_utf8(prompts[i], i, " is not valid UTF-8 (at byte ");
  std::vector<std::vector<int64_t>> rows;
  for (const std::string& prompt : prompts) {
    std::string_view text = prompt;
    if (text.substr(0, kImage.size()) == kImage) text.remove_prefix(kImage.size());
    if (text.find(kImage) != std::string_view::npos)
      throw InvalidArgument("a prompt may hold one <image> token, at its start (one image per prompt)");
    std::vector<int64_t> ids(layout.num_image_tokens, layout.image_token_index);
    ids.push_back(tokenizer.bos_id());
    const auto pieces = tokenize_paligemma(tokenizer, std::string(text) + "\n", layout.image_token_index);
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    rows.push_back(std::move(ids));
  }
  EncodedPrompts out;
  out.batch = static_cast<int64_t>(rows.size());
  for (const auto& row : rows) out.length = std::max<int64_t>(out.length, static_cast<int64_t>(row.size()));
  out.input_ids.assign(out.batch * out.length, tokenizer.pad_id());
  out.attention_mask.assign(out.batch * out.length, 0);
  for (int64_t b = 0; b < out.batch; ++b) {
    const int64_t offset = out.length - static_cast<int64_t>(rows[b].size());  // left padding
    for (size_t t = 0; t < rows[b].size(); ++t) {
      out.input_ids[b * out.length + offset + t] = rows[b][t];
      out.attention_mask[b * out.length + offset + t] = 1;
    }
  }
  return out;
}

std::string decode_base64(std::string_view text) {
  const auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  size_t data = 0, padding = 0;
  for (const char c : text) {
    if (c == '=') {
      ++padding;
      continue;
    }
    if (value(c) < 0 || padding > 0) throw InvalidArgument("Only base64 data is allowed");
    ++data;
  }
  if (data % 4 == 1)
    throw InvalidArgument(str_cat("Invalid base64-encoded string: number of data characters (", data,
                                  ") cannot be 1 more than a multiple of 4"));
  if ((data + padding) % 4 != 0 || padding > 2) throw InvalidArgument("Incorrect padding");
  std::string out;
  out.reserve(data * 3 / 4);
  uint32_t bits = 0;
  int count = 0;
  for (size_t i = 0; i < data; ++i) {
    bits = (bits << 6) | static_cast<uint32_t>(value(text[i]));
    if (++count == 4) {
      out += static_cast<char>(bits >> 16);
      out += static_cast<char>((bits >> 8) & 0xFF);
      out += static_cast<char>(bits & 0xFF);
      bits = 0;
      count = 0;
    }
  }
  if (count == 2) out += static_cast<char>(bits >> 4);
  if (count == 3) {
    out += static_cast<char>(bits >> 10);
    out += static_cast<char>((bits >> 2) & 0xFF);
  }
  return out;
}

}  // namespace pali::api
