#include "spillway/tokenizer/tokenizer.h"

#include "bpe_tokenizer.h"
#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "utf8.h"
#include "vocab.h"

namespace spillway {

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const gguf::GgufFile& file) {
  auto data = tokenizer_detail::VocabData::from_metadata(file.metadata());
  if (data.model == "gpt2")
    return std::make_unique<tokenizer_detail::BpeTokenizer>(std::move(data));
  throw UnsupportedError(file.path() + ": tokenizer.ggml.model = '" + data.model +
                         "' is not supported (expected 'gpt2', byte-level BPE)");
}

std::string StreamDecoder::push(TokenId id) {
  const TokenId one[1] = {id};
  pending_ += tok_.decode(one);
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
