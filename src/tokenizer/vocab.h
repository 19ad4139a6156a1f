// Vocabulary data read from GGUF metadata, and the parts every tokenizer shares:
// special-token recognition, BOS/EOS handling, id lookups and decoding (private).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "spillway/tokenizer/tokenizer.h"

namespace spillway::gguf {
class Metadata;
}

namespace spillway::tokenizer_detail {

// What tokenizer.ggml.* says, checked for consistency.
struct VocabData {
  std::string source;  // file name for messages
  std::string model;   // tokenizer.ggml.model
  std::string pre;     // tokenizer.ggml.pre ("" when absent)
  std::vector<std::string> tokens;
  std::vector<TokenType> types;     // one per token
  std::vector<std::string> merges;  // BPE merges, rank = index
  std::optional<TokenId> bos, eos, eot, eom, unk, pad;
  std::optional<bool> add_bos, add_eos;

  // Reads and validates the keys. Throws FormatError (missing key, wrong type, arrays of
  // different lengths, a special-token id outside the vocabulary).
  static VocabData from_metadata(const gguf::Metadata& meta);
};

// A piece of input text: either text still to tokenize or an already recognized token.
struct Fragment {
  std::string_view text;  // raw text (when id < 0)
  TokenId id = -1;        // recognized special token
};

// Shared implementation of the Tokenizer interface for vocabularies held as VocabData.
// Subclasses tokenize plain text (encode_text) and say how a token maps to bytes.
class VocabTokenizer : public Tokenizer {
 public:
  explicit VocabTokenizer(VocabData data);

  std::vector<TokenId> encode(std::string_view text, const EncodeOptions& opts) const override;
  std::string decode(std::span<const TokenId> ids, bool keep_control) const override;
  const std::string& piece(TokenId id) const override;
  TokenType token_type(TokenId id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(data_.tokens.size()); }
  std::string_view model_name() const override { return data_.model; }
  std::string_view pre_name() const override { return data_.pre; }
  std::optional<TokenId> bos() const override { return data_.bos; }
  std::optional<TokenId> eos() const override { return data_.eos; }
  bool add_bos() const override { return add_bos_; }
  bool is_eog(TokenId id) const override;
  std::optional<TokenId> find(std::string_view text) const override;

  // Splits text at special tokens (longest first; control tokens only when
  // parse_special, user-defined ones always, as llama.cpp does).
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;

 protected:
  // Appends the ids of plain text (no special tokens in it) to `out`.
  virtual void encode_text(std::string_view text, std::vector<TokenId>& out) const = 0;
  void check_id(TokenId id) const;
  void set_add_bos_default(bool v) { add_bos_ = data_.add_bos.value_or(v); }

  VocabData data_;
  std::unordered_map<std::string, TokenId> by_text_;  // stored text -> id (last one wins)

 private:
  bool add_bos_ = false;
  bool add_eos_ = false;
  std::vector<TokenId> specials_;  // control / user-defined / unknown, longest text first
  std::vector<bool> eog_;          // [n_vocab]
};

}  // namespace spillway::tokenizer_detail
