#include "spillway/tokenizer/tokenizer.h"

#include "bpe_tokenizer.h"
#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "spm_tokenizer.h"
#include "utf8.h"
#include "vocab.h"

namespace spillway {

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const gguf::GgufFile& file) {
  auto data = tokenizer_detail::VocabData::from_metadata(file.metadata());
  if (data.model == "gpt2")
    return std::make_unique<tokenizer_detail::BpeTokenizer>(std::move(data));
  if (data.model == "llama")
    return std::make_unique<tokenizer_detail::SpmTokenizer>(std::move(data));
  throw UnsupportedError(file.path() + ": tokenizer.ggml.model = '" + data.model +
                         "' is not supported (supported: gpt2 (byte-level BPE), llama "
                         "(SentencePiece))");
}

std::string StreamDecoder::push(TokenId id) {
  // The token's own bytes: decode() of a whole sequence may drop a leading space that a
  // stream must keep.
  const TokenType t = tok_.token_type(id);
  if (t != TokenType::Control && t != TokenType::Unknown) pending_ += tok_.token_bytes(id);
  const size_t n = tokenizer_detail::utf8_complete_prefix(pending_);
  std::string out = tokenizer_detail::replace_invalid_utf8(std::string_view(pending_).substr(0, n));
  pending_.erase(0, n);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = tokenizer_detail::replace_invalid_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace spillway
