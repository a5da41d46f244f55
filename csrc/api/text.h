// Text inside the C++ API: the SentencePiece tokenizer a model file carries,
// and each architecture's prompt layout, reproduced from the Python package.
//
//   "pali"       pali_engine/tokenizer.py and backend.encode_prompts: the
//                pieces of the prompt and eos, right-padded with pad, at most
//                max_prompt_tokens
//   "paligemma"  pali_engine/paligemma_processor.py: <image> x N, <bos>, the
//                prompt and "\n" (special and <locNNNN>/<segNNN> tokens matched
//                by name first, the text between them SentencePiece-encoded
//                as is), left-padded with <pad>
//
// Decoding is the Python Tokenizer's: pad and ids past the SentencePiece
// model skipped, stopping at the first eos.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace pali::api {

class Tokenizer {
 public:
  // The serialized model; InvalidArgument("not a SentencePiece model: ...") when it is not one.
  explicit Tokenizer(const std::string& model_bytes);
  ~Tokenizer();

  int64_t piece_count() const { return pieces_; }
  int64_t unk_id() const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t pad_id() const;
  int64_t piece_to_id(std::string_view piece) const;
  // The pieces of valid UTF-8 text, with no eos or bos.
  std::vector<int64_t> encode(std::string_view text) const;
  // Python's Tokenizer.decode.
  std::string decode(const std::vector<int64_t>& ids, int64_t pad_id, int64_t eos_id) const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  int64_t pieces_ = 0;
};

struct EncodedPrompts {
  int64_t batch = 0, length = 0;
  std::vector<int64_t> input_ids, attention_mask;
};

struct PaliPromptLayout {
  int64_t pad_id = 0, eos_id = 1, max_prompt_tokens = 0;
};
EncodedPrompts encode_pali_prompts(const Tokenizer& tokenizer, const std::vector<std::string>& prompts,
                                   const PaliPromptLayout& layout);

struct PaliGemmaPromptLayout {
  int64_t image_token_index = 0, num_image_tokens = 0;
};
EncodedPrompts encode_paligemma_prompts(const Tokenizer& tokenizer, const std::vector<std::string>& prompts,
                                        const PaliGemmaPromptLayout& layout);

// RFC 4648 base64 with Python's base64.b64decode(..., validate=True) rules;
// InvalidArgument with binascii's message when the text is not that.
std::string decode_base64(std::string_view text);

}  // namespace pali::api
