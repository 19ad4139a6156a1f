// Vocabulary data read from GGUF metadata, and the parts every tokenizer shares:
// special-token recognition, BOS/EOS handling, id lookups and decoding (private).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
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
  std::vector<float> scores;        // one per token, or empty when the key is absent
  std::vector<std::string> merges;  // BPE merges, rank = index
  std::optional<TokenId> bos, eos, eot, eom, unk, pad;
  std::optional<bool> add_bos, add_eos;
  std::optional<bool> add_space_prefix;  // tokenizer.ggml.add_space_prefix

  // Reads and validates the keys. Throws FormatError (missing key, wrong type, arrays of
  // different lengths, a special-token id outside the vocabulary, a NaN score).
  static VocabData from_metadata(const gguf::Metadata& meta);
};

// Hash index from token text to id over texts held elsewhere (the vocabulary's token
// list, passed to every call). Open addressing; a slot holds the first 8 bytes of its
// text, so most lookups touch one cache line. Built once, read-only afterwards, so
// concurrent lookups are safe.
class TokenIndex {
 public:
  // Indexes texts[0..n); when a text occurs more than once the last id wins (as
  // llama.cpp's text -> id map does).
  void build(const std::vector<std::string>& texts);
  // Id of `s`, or -1. `texts` must be the vector given to build().
  TokenId find(std::string_view s, const std::vector<std::string>& texts) const;

 private:
  struct Slot {
    uint64_t head = 0;  // first 8 bytes of the text, zero-padded
    uint32_t id1 = 0;   // id + 1; 0 = empty
    uint16_t len = 0;   // text length, 0xFFFF for 0xFFFF and longer
    uint16_t tag = 0;   // top 16 bits of the hash
  };
  std::vector<Slot> slots_;  // [capacity]
  uint64_t mask_ = 0;        // capacity - 1 (capacity a power of two)
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

  // Splits text at special tokens, as llama.cpp does: the special tokens are taken in
  // order of decreasing text length (equal lengths in the order std::sort leaves them,
  // starting from increasing ids), and each one claims, left to right, every occurrence
  // that lies wholly in text no longer token claimed. Control and unknown tokens take
  // part only when parse_special; user-defined ones always.
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;

 protected:
  // Appends the ids of plain text (no special tokens in it) to `out`. `after_special`:
  // the text starts the input or follows a special token.
  virtual void encode_text(std::string_view text, bool after_special,
                           std::vector<TokenId>& out) const = 0;
  void check_id(TokenId id) const;
  void set_add_bos_default(bool v) { add_bos_ = data_.add_bos.value_or(v); }
  bool add_eos_default() const { return add_eos_; }
  // Id of the token written exactly as `s`, or -1 (no allocation).
  TokenId lookup(std::string_view s) const { return index_.find(s, data_.tokens); }

  VocabData data_;

 private:
  // Special-token texts as a byte trie: one pass over the text finds every occurrence.
  struct TrieNode {
    int32_t first_edge = 0;  // into trie_edges_
    int32_t n_edges = 0;
    int32_t rank_any = -1;   // rank of the first special ending here, or -1
    int32_t rank_user = -1;  // same among user-defined tokens only
  };
  struct TrieEdge {
    uint8_t byte;
    int32_t child;
  };
  void build_special_trie();

  TokenIndex index_;
  bool add_bos_ = false;
  bool add_eos_ = false;
  std::vector<TokenId> specials_;         // [n_special] control / user-defined / unknown, by rank
  std::vector<TrieNode> trie_nodes_;      // [n_node]; node 0 is the root
  std::vector<TrieEdge> trie_edges_;      // [n_edge] grouped by parent node, sorted by byte
  std::array<int32_t, 256> trie_root_{};  // [256] child of the root for each byte, or -1
  std::vector<bool> eog_;                 // [n_vocab]
};

}  // namespace spillway::tokenizer_detail
