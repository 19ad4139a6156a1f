// SentencePiece-style tokenizer (tokenizer.ggml.model "llama"): Llama 2, TinyLlama,
// Gemma 3 and other vocabularies with per-token scores and <0xXX> byte tokens; ids equal
// llama.cpp's (private).
//
// Encoding of a text fragment (what the special-token partition leaves between special
// tokens):
//   1. With add_space_prefix, a fragment that starts the input or follows a special
//      token gets one space in front.
//   2. Every space becomes U+2581 ("▁"); nothing else is normalized (ill-formed UTF-8 is
//      kept as it is).
//   3. The fragment is cut into characters by the length its lead byte announces (a
//      stray continuation byte is a character of its own; a sequence cut by the end of
//      the fragment is shortened).
//   4. Repeatedly, of all adjacent pairs whose concatenation is a token of the
//      vocabulary (any type), the one whose token has the highest score is merged; ties
//      go to the leftmost pair.
//   5. Each resulting piece becomes its token. A character that is no token becomes
//      the <0xXX> tokens of its bytes (or the one-character tokens of those bytes);
//      when some byte has neither, the character becomes the unknown token (nothing
//      when there is none).
// Cost: O(n log n) in the fragment length. A fragment over 512 MiB throws
// InvalidArgument.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "vocab.h"

namespace spillway::tokenizer_detail {

class SpmTokenizer final : public VocabTokenizer {
 public:
  // add_space_prefix defaults to true, add_bos to true, add_eos to false (llama.cpp's
  // defaults for this kind) when the metadata does not say.
  explicit SpmTokenizer(VocabData data);

  // Normal tokens: their text with U+2581 as space. Byte tokens: the byte. Control,
  // user-defined and unknown tokens: their text. Unused and undefined ones: nothing.
  std::string token_bytes(TokenId id) const override;

  // As llama.cpp's detokenizer. Without keep_control, a leading BOS (when the
  // vocabulary adds BOS) and a trailing EOS (when it adds EOS) are dropped and control
  // and unknown tokens print nothing; with it, every token prints. With add_space_prefix, one space
  // is removed from the start of the first token's text, unless a BOS was dropped in
  // front of it (so decode(encode(s)) == s without BOS, " " + s after a dropped BOS).
  std::string decode(std::span<const TokenId> ids, bool keep_control) const override;

  bool add_space_prefix() const { return add_space_prefix_; }

 protected:
  void encode_text(std::string_view text, bool after_special,
                   std::vector<TokenId>& out) const override;

 private:
  void append_bytes(TokenId id, std::string& out) const;

  bool add_space_prefix_ = true;
  size_t max_token_bytes_ = 0;             // longest token text; longer pairs never merge
  std::array<TokenId, 256> byte_token_{};  // [256] id a raw byte falls back to, or -1
};

// Heap comparisons the merge loops of this thread have made so far: a machine-independent
// measure of encoding work, for tests of its growth with the input.
uint64_t spm_comparisons();

}  // namespace spillway::tokenizer_detail
