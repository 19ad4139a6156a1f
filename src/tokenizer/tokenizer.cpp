#include "spillway/tokenizer/tokenizer.h"

#include <algorithm>

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

namespace {

bool ascii_graphic(char c) {
  return c > 0x20 && c < 0x7f;
}
bool ascii_letter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// End of the text that can be encoded now (0: none): just after the last newline with an
// ASCII graphic byte on either side, looking only at newlines from index `from` on.
size_t newline_cut(std::string_view s, size_t from) {
  for (size_t i = s.size() >= 2 ? s.size() - 2 : 0; i >= std::max<size_t>(from, 1); --i)
    if (s[i] == '\n' && ascii_graphic(s[i - 1]) && ascii_graphic(s[i + 1])) return i + 1;
  return 0;
}

// Fallbacks for a long text without such a newline: before the last space between two
// ASCII letters, else after the last complete UTF-8 character.
size_t fallback_cut(std::string_view s) {
  for (size_t i = s.size() >= 2 ? s.size() - 2 : 0; i >= 1; --i)
    if (s[i] == ' ' && ascii_letter(s[i - 1]) && ascii_letter(s[i + 1])) return i;
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xc0) == 0x80) --i;
  return i > 0 ? i - 1 : s.size();  // before the last lead byte (its sequence may be cut)
}

}  // namespace

StreamEncoder::StreamEncoder(const Tokenizer& tok, const EncodeOptions& opts, size_t max_pending)
    : tok_(tok), opts_(opts), max_pending_(std::max<size_t>(max_pending, 2)) {}

void StreamEncoder::encode_part(std::string_view text, std::vector<TokenId>& out) {
  EncodeOptions o = opts_;
  if (started_) o.add_bos = false;
  o.continues_text = o.continues_text || started_;
  o.add_eos = false;
  const std::vector<TokenId> ids = tok_.encode(text, o);
  out.insert(out.end(), ids.begin(), ids.end());
  started_ = true;
}

void StreamEncoder::push(std::string_view text, std::vector<TokenId>& out) {
  if (finished_) throw InvalidArgument("StreamEncoder::push after finish()");
  // Text held back has no cut point, except perhaps at its last byte (which needs the
  // byte after it): look only at the new text and the byte before it.
  const size_t from = pending_.empty() ? 0 : pending_.size() - 1;
  pending_.append(text);
  size_t cut = newline_cut(pending_, from);
  if (cut == 0 && pending_.size() > max_pending_) cut = fallback_cut(pending_);
  if (cut == 0) return;
  encode_part(std::string_view(pending_).substr(0, cut), out);
  pending_.erase(0, cut);
}

void StreamEncoder::finish(std::vector<TokenId>& out) {
  if (finished_) throw InvalidArgument("StreamEncoder::finish called twice");
  finished_ = true;
  if (!pending_.empty() || !started_) encode_part(pending_, out);
  pending_.clear();
  pending_.shrink_to_fit();
  EncodeOptions eos;  // EOS as the options (or the metadata) say, after everything
  eos.add_bos = false;
  eos.add_eos = opts_.add_eos;
  eos.continues_text = true;
  const std::vector<TokenId> ids = tok_.encode("", eos);
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<TokenId> encode_stream(const Tokenizer& tok, std::istream& in, const std::string& name,
                                   int64_t max_tokens, const EncodeOptions& opts) {
  constexpr size_t kBlock = size_t{64} << 10;
  StreamEncoder enc(tok, opts);
  std::vector<TokenId> ids;
  std::string block(kBlock, '\0');
  const auto enough = [&] {
    return max_tokens > 0 && static_cast<int64_t>(ids.size()) >= max_tokens;
  };
  while (!enough()) {
    in.read(block.data(), static_cast<std::streamsize>(kBlock));
    const auto got = static_cast<size_t>(in.gcount());
    if (in.bad()) throw IoError("error reading '" + name + "'");
    if (got == 0) break;
    enc.push(std::string_view(block).substr(0, got), ids);
  }
  if (!enough()) enc.finish(ids);
  if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens)
    ids.resize(static_cast<size_t>(max_tokens));
  return ids;
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
