#include "vocab.h"

#include <algorithm>
#include <array>
#include <numeric>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"

namespace spillway::tokenizer_detail {

namespace {

// Token texts that end generation whatever their declared type (llama.cpp treats them
// as control tokens too).
constexpr std::array<std::string_view, 12> kEogTexts = {
    "<|eot_id|>",      "<|im_end|>",         "<|end|>", "<end_of_turn>",
    "<|endoftext|>",   "<|eom_id|>",         "<EOT>",   "_<EOT>",
    "<|end_of_text|>", "<end_of_utterance>", "[EOT]",   "[EOS]",
};

std::optional<TokenId> read_id(const gguf::Metadata& meta, const std::string& key, size_t n_vocab,
                               bool required_in_range) {
  const auto v = meta.find<int64_t>(key);
  if (!v) return std::nullopt;
  if (*v < 0 || static_cast<uint64_t>(*v) >= n_vocab) {
    if (required_in_range) {
      throw FormatError(meta.source + ": " + key + " = " + std::to_string(*v) +
                        " is outside the vocabulary (expected 0.." + std::to_string(n_vocab - 1) +
                        ")");
    }
    return std::nullopt;  // llama.cpp disables such ids too
  }
  return static_cast<TokenId>(*v);
}

}  // namespace

VocabData VocabData::from_metadata(const gguf::Metadata& meta) {
  VocabData d;
  d.source = meta.source;
  d.model = meta.get<std::string>("tokenizer.ggml.model");
  d.pre = meta.find<std::string>("tokenizer.ggml.pre").value_or("");
  d.tokens = meta.get_strings("tokenizer.ggml.tokens");
  if (d.tokens.empty()) {
    throw FormatError(meta.source + ": tokenizer.ggml.tokens is empty (expected >= 1 token)");
  }
  if (d.tokens.size() > static_cast<size_t>(INT32_MAX)) {
    throw FormatError(meta.source + ": tokenizer.ggml.tokens has " +
                      std::to_string(d.tokens.size()) + " entries (expected < 2^31)");
  }
  d.types.assign(d.tokens.size(), TokenType::Normal);
  if (meta.contains("tokenizer.ggml.token_type")) {
    const auto t = meta.get_ints("tokenizer.ggml.token_type");
    if (t.size() != d.tokens.size()) {
      throw FormatError(meta.source + ": tokenizer.ggml.token_type has " +
                        std::to_string(t.size()) + " entries, expected " +
                        std::to_string(d.tokens.size()) + " (one per token)");
    }
    for (size_t i = 0; i < t.size(); ++i) {
      // Unknown type numbers are kept as Undefined, as llama.cpp does.
      d.types[i] = (t[i] >= 0 && t[i] <= 6) ? static_cast<TokenType>(t[i]) : TokenType::Undefined;
    }
  }
  if (meta.contains("tokenizer.ggml.merges")) d.merges = meta.get_strings("tokenizer.ggml.merges");
  const size_t n = d.tokens.size();
  d.bos = read_id(meta, "tokenizer.ggml.bos_token_id", n, true);
  d.eos = read_id(meta, "tokenizer.ggml.eos_token_id", n, true);
  d.eot = read_id(meta, "tokenizer.ggml.eot_token_id", n, false);
  d.eom = read_id(meta, "tokenizer.ggml.eom_token_id", n, false);
  d.unk = read_id(meta, "tokenizer.ggml.unknown_token_id", n, false);
  d.pad = read_id(meta, "tokenizer.ggml.padding_token_id", n, false);
  d.add_bos = meta.find<bool>("tokenizer.ggml.add_bos_token");
  d.add_eos = meta.find<bool>("tokenizer.ggml.add_eos_token");
  return d;
}

VocabTokenizer::VocabTokenizer(VocabData data) : data_(std::move(data)) {
  const size_t n = data_.tokens.size();
  by_text_.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) by_text_[data_.tokens[i]] = static_cast<TokenId>(i);

  eog_.assign(n, false);
  for (auto id : {data_.eos, data_.eot, data_.eom}) {
    if (id) eog_[*id] = true;
  }
  for (auto t : kEogTexts) {
    auto it = by_text_.find(std::string(t));
    if (it == by_text_.end()) continue;
    eog_[it->second] = true;
    data_.types[it->second] = TokenType::Control;
  }

  for (size_t i = 0; i < n; ++i) {
    const TokenType t = data_.types[i];
    if ((t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) &&
        !data_.tokens[i].empty()) {
      specials_.push_back(static_cast<TokenId>(i));
    }
  }
  std::stable_sort(specials_.begin(), specials_.end(), [&](TokenId a, TokenId b) {
    return data_.tokens[a].size() > data_.tokens[b].size();
  });
  add_bos_ = data_.add_bos.value_or(false);
  add_eos_ = data_.add_eos.value_or(false);
}

void VocabTokenizer::check_id(TokenId id) const {
  if (id < 0 || id >= vocab_size()) {
    throw InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary of " +
                          data_.source + " (expected 0.." + std::to_string(vocab_size() - 1) + ")");
  }
}

const std::string& VocabTokenizer::piece(TokenId id) const {
  check_id(id);
  return data_.tokens[id];
}

TokenType VocabTokenizer::token_type(TokenId id) const {
  check_id(id);
  return data_.types[id];
}

bool VocabTokenizer::is_eog(TokenId id) const {
  return id >= 0 && id < vocab_size() && eog_[id];
}

std::optional<TokenId> VocabTokenizer::find(std::string_view text) const {
  auto it = by_text_.find(std::string(text));
  if (it == by_text_.end()) return std::nullopt;
  return it->second;
}

std::vector<Fragment> VocabTokenizer::partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  frags.push_back({text, -1});
  std::vector<Fragment> next;
  for (TokenId sid : specials_) {
    if (!parse_special && data_.types[sid] != TokenType::UserDefined) continue;
    const std::string& st = data_.tokens[sid];
    bool any = false;
    for (const Fragment& f : frags) {
      if (f.id < 0 && f.text.find(st) != std::string_view::npos) {
        any = true;
        break;
      }
    }
    if (!any) continue;
    next.clear();
    for (const Fragment& f : frags) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      std::string_view rest = f.text;
      for (;;) {
        const size_t at = rest.find(st);
        if (at == std::string_view::npos) break;
        if (at > 0) next.push_back({rest.substr(0, at), -1});
        next.push_back({{}, sid});
        rest.remove_prefix(at + st.size());
      }
      if (!rest.empty()) next.push_back({rest, -1});
    }
    frags.swap(next);
  }
  return frags;
}

std::vector<TokenId> VocabTokenizer::encode(std::string_view text,
                                            const EncodeOptions& opts) const {
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 2);
  if (opts.add_bos.value_or(add_bos_)) {
    if (!data_.bos) {
      throw InvalidArgument(data_.source +
                            ": BOS requested but tokenizer.ggml.bos_token_id is absent");
    }
    out.push_back(*data_.bos);
  }
  for (const Fragment& f : partition(text, opts.parse_special)) {
    if (f.id >= 0)
      out.push_back(f.id);
    else
      encode_text(f.text, out);
  }
  if (opts.add_eos.value_or(add_eos_)) {
    if (!data_.eos) {
      throw InvalidArgument(data_.source +
                            ": EOS requested but tokenizer.ggml.eos_token_id is absent");
    }
    out.push_back(*data_.eos);
  }
  return out;
}

std::string VocabTokenizer::decode(std::span<const TokenId> ids, bool keep_control) const {
  std::string out;
  for (TokenId id : ids) {
    check_id(id);
    const TokenType t = data_.types[id];
    if (!keep_control && (t == TokenType::Control || t == TokenType::Unknown)) continue;
    out += token_bytes(id);
  }
  return out;
}

}  // namespace spillway::tokenizer_detail
