// Tokenizers built from GGUF metadata (tokenizer.ggml.*): byte-level BPE ("gpt2") with
// the pre-tokenizer named by tokenizer.ggml.pre, and SentencePiece-style vocabularies
// with scores and byte-fallback tokens ("llama": Llama 2, Gemma 3). Ids match llama.cpp's.
#pragma once

#include <cstdint>
#include <istream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace spillway::gguf {
class GgufFile;
}

namespace spillway {

using TokenId = int32_t;

// GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

struct EncodeOptions {
  // Prepend BOS. nullopt: as the metadata says (tokenizer.ggml.add_bos_token).
  std::optional<bool> add_bos;
  // Append EOS. nullopt: as the metadata says (tokenizer.ggml.add_eos_token, else no).
  std::optional<bool> add_eos;
  // Recognize special/control tokens written in the text ("<|im_start|>") as single ids.
  bool parse_special = false;
  // The text continues one encoded before (StreamEncoder): a SentencePiece vocabulary with
  // add_space_prefix puts no space in front of its first fragment.
  bool continues_text = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Builds the tokenizer the metadata describes. Throws UnsupportedError for an unknown
  // tokenizer.ggml.model (supported: gpt2, llama) or pre-tokenizer, FormatError for
  // inconsistent metadata.
  static std::unique_ptr<Tokenizer> from_gguf(const gguf::GgufFile& file);

  virtual std::vector<TokenId> encode(std::string_view text,
                                      const EncodeOptions& opts = {}) const = 0;
  // Concatenated bytes of the tokens' text (special tokens as their text; BOS/EOS and
  // other control tokens are skipped unless keep_control). May end in partial UTF-8.
  // SentencePiece vocabularies with add_space_prefix drop the space that encode put in
  // front of the first token, as llama.cpp does (see spm_tokenizer.h).
  virtual std::string decode(std::span<const TokenId> ids, bool keep_control = false) const = 0;
  // The raw bytes one token stands for (control tokens: their text).
  virtual std::string token_bytes(TokenId id) const = 0;
  // The vocabulary entry as stored in the file ("Ġthe").
  virtual const std::string& piece(TokenId id) const = 0;
  virtual TokenType token_type(TokenId id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::string_view model_name() const = 0;  // "gpt2"
  virtual std::string_view pre_name() const = 0;    // "smollm"
  virtual std::optional<TokenId> bos() const = 0;
  virtual std::optional<TokenId> eos() const = 0;
  virtual bool add_bos() const = 0;
  // End of generation: EOS, EOT, <|im_end|>-like control tokens.
  virtual bool is_eog(TokenId id) const = 0;
  // Id of a token written exactly as `text` in the vocabulary.
  virtual std::optional<TokenId> find(std::string_view text) const = 0;
};

// Tokenizes a text that arrives in pieces (a file read block by block) into the ids
// encode() gives for the whole text, holding back only the text after the last safe cut.
// A safe cut lies after a newline that has a non-whitespace byte on either side: there the
// byte-level BPE pre-tokenizers (gpt2, smollm, llama3, qwen2 families) always split, and a
// SentencePiece merge could cross it only through a vocabulary piece holding a newline
// followed by another character (Gemma 3 and Llama 2 have none; tests check the corpus
// both ways). When more than max_pending bytes arrive without such a newline, the encoder
// cuts before a space that follows a letter and precedes one (a BPE pre-token boundary),
// and failing that at the last UTF-8 character boundary: memory stays bounded by
// max_pending, at the price that a text with no newline and no space for that long may
// tokenize differently at that cut. BOS (as opts say) comes first, EOS (as opts say) at
// finish(). Holds a reference to the tokenizer.
class StreamEncoder {
 public:
  explicit StreamEncoder(const Tokenizer& tok, const EncodeOptions& opts = {},
                         size_t max_pending = size_t{16} << 20);
  // Appends text; appends to `out` the ids that later text can no longer change.
  void push(std::string_view text, std::vector<TokenId>& out);
  // End of the text: appends the ids of what was held back (and EOS if asked). The encoder
  // may not be pushed to afterwards (InvalidArgument).
  void finish(std::vector<TokenId>& out);
  // Bytes held back so far.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  void encode_part(std::string_view text, std::vector<TokenId>& out);

  const Tokenizer& tok_;
  EncodeOptions opts_;
  size_t max_pending_;
  std::string pending_;  // text after the last cut
  bool started_ = false;
  bool finished_ = false;
};

// Reads `in` to its end (or until max_tokens ids are had, 0: no limit) in blocks of 64
// KiB through a StreamEncoder, so that memory is bounded by the ids kept plus the
// encoder's max_pending, never by the text. Returns at most max_tokens ids (EOS, if asked,
// only when the whole text was read). Throws IoError naming `name` on a read error.
std::vector<TokenId> encode_stream(const Tokenizer& tok, std::istream& in, const std::string& name,
                                   int64_t max_tokens = 0, const EncodeOptions& opts = {});

// Turns a stream of token ids into UTF-8 text, holding back an incomplete trailing UTF-8
// sequence until the bytes that complete it arrive. Each token contributes its
// token_bytes (control and unknown tokens nothing); no leading space is removed.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  // Text that is complete after this token (possibly empty).
  std::string push(TokenId id);
  // Whatever is held back (invalid sequences become U+FFFD).
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace spillway
