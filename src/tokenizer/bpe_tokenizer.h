// Byte-level BPE (tokenizer.ggml.model "gpt2"): GPT-2's byte-to-character mapping,
// merges applied by rank, pre-tokenization by the regexes llama.cpp uses for the
// vocabulary's tokenizer.ggml.pre (private).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "regex_splitter.h"
#include "vocab.h"

namespace spillway::tokenizer_detail {

// The pre-tokenizer a tokenizer.ggml.pre name selects.
struct PreTokenizerSpec {
  std::string family;                    // "smollm", "gpt2", "llama3", "qwen2", "default"
  std::vector<std::string> expressions;  // applied in order
  bool ignore_merges = false;            // a piece that is a whole token is taken as is
  bool add_bos = false;                  // BOS default when the metadata does not say
};
// nullopt for a name this build does not know.
std::optional<PreTokenizerSpec> pre_tokenizer_spec(std::string_view pre);

// GPT-2's reversible byte <-> printable character mapping.
const std::array<std::string, 256>& byte_to_piece_char();  // byte -> UTF-8 of its char

class BpeTokenizer final : public VocabTokenizer {
 public:
  // Throws UnsupportedError for an unknown pre-tokenizer, FormatError for a bad merge.
  explicit BpeTokenizer(VocabData data);

  std::string token_bytes(TokenId id) const override;

  // The pre-tokenizer's pieces of plain text (bytes as encode sees them).
  std::vector<std::string> pretokenize(std::string_view text) const;

 protected:
  void encode_text(std::string_view text, bool after_special,
                   std::vector<TokenId>& out) const override;

 private:
  // A merge candidate: ranks order the merges; `result` is the merged symbol.
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct Workspace;

  int32_t symbol_for(const std::string& bytes);
  void encode_piece(std::string_view bytes, std::vector<TokenId>& out, Workspace& ws) const;
  void emit(int32_t sym, std::vector<TokenId>& out) const;

  PreTokenizerSpec spec_;
  std::unique_ptr<RegexSplitter> splitter_;
  int32_t n_vocab_ = 0;
  // Symbols: ids below n_vocab_ are tokens; ids from n_vocab_ on are byte strings that
  // merges produce but the vocabulary lacks (emitted byte by byte, as llama.cpp does).
  std::unordered_map<std::string, int32_t> symbol_by_bytes_;
  std::vector<std::string> virtual_bytes_;      // [n_virtual]
  std::array<int32_t, 256> byte_symbol_{};      // [256] symbol of each single byte
  std::unordered_map<uint64_t, Merge> merges_;  // (left symbol, right symbol) -> merge
  std::vector<std::string> bytes_of_;           // [n_vocab] what each token decodes to
};

}  // namespace spillway::tokenizer_detail
