#include "vocab.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"

namespace spillway::tokenizer_detail {

namespace {

// Token texts that end generation whatever their declared type; llama.cpp makes them
// control tokens too (two exceptions below).
constexpr std::array<std::string_view, 22> kEogTexts = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\xEF\xBD\x9C"
    "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",  // <｜end▁of▁sentence｜>
    "[e~[",
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

// Scores may be stored as floats or (as llama.cpp also accepts) integers.
std::vector<float> read_scores(const gguf::Metadata& meta, const std::string& key, size_t n) {
  const gguf::Value* v = meta.value(key);
  const gguf::Array* a = v ? v->array() : nullptr;
  std::vector<float> scores;
  if (a && (a->elem_type == gguf::ValueType::FLOAT32 || a->elem_type == gguf::ValueType::FLOAT64)) {
    scores = meta.get_floats(key);
  } else if (a && a->elem_type != gguf::ValueType::STRING &&
             a->elem_type != gguf::ValueType::BOOL && a->elem_type != gguf::ValueType::ARRAY) {
    const auto ints = meta.get_ints(key);
    scores.assign(ints.begin(), ints.end());
  } else {
    throw FormatError(meta.source + ": " + key + " holds " + (v ? v->describe() : "nothing") +
                      " (expected an array of floats, one per token)");
  }
  if (scores.size() != n) {
    throw FormatError(meta.source + ": " + key + " has " + std::to_string(scores.size()) +
                      " entries, expected " + std::to_string(n) + " (one per token)");
  }
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(scores[i])) {
      throw FormatError(meta.source + ": " + key + "[" + std::to_string(i) +
                        "] is NaN (expected a number)");
    }
  }
  return scores;
}

uint64_t load64(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

uint32_t load32(const char* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// The bytes of a text of at most 8 bytes packed into one word; for a given length this
// is one-to-one (reads overlap instead of running past the end). For longer texts:
// their first 8 bytes.
uint64_t head_of(std::string_view s) {
  const size_t n = s.size();
  const char* p = s.data();
  if (n >= 8) return load64(p);
  if (n >= 4) return load32(p) | (uint64_t{load32(p + n - 4)} << 32);
  if (n == 0) return 0;
  return static_cast<uint8_t>(p[0]) | (uint64_t{static_cast<uint8_t>(p[n / 2])} << 8) |
         (uint64_t{static_cast<uint8_t>(p[n - 1])} << 16);
}

uint64_t mix(uint64_t h) {
  h ^= h >> 31;
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 29;
  return h;
}

// A fast, well-mixing hash of a short byte string (not cryptographic); `head` is
// head_of(s).
uint64_t hash_bytes(std::string_view s, uint64_t head) {
  constexpr uint64_t kMul = 0x94D049BB133111EBULL;
  uint64_t h = (0x9E3779B97F4A7C15ULL ^ (s.size() * kMul)) + head;
  h = mix(h * kMul);
  if (s.size() > 8) {
    const char* p = s.data();
    size_t i = 8;
    for (; i + 8 < s.size(); i += 8) h = mix((h ^ load64(p + i)) * kMul);
    h = mix((h ^ load64(p + s.size() - 8)) * kMul);  // the last 8 bytes (may overlap)
  }
  return h;
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
  if (meta.contains("tokenizer.ggml.scores")) {
    d.scores = read_scores(meta, "tokenizer.ggml.scores", d.tokens.size());
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
  d.add_space_prefix = meta.find<bool>("tokenizer.ggml.add_space_prefix");
  return d;
}

namespace {

uint16_t len_field(size_t n) {
  return static_cast<uint16_t>(std::min<size_t>(n, 0xFFFF));
}

}  // namespace

void TokenIndex::build(const std::vector<std::string>& texts) {
  size_t cap = 16;
  while (cap < texts.size() * 2) cap *= 2;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  for (size_t id = 0; id < texts.size(); ++id) {
    const std::string& t = texts[id];
    const uint64_t head = head_of(t);
    const uint64_t h = hash_bytes(t, head);
    const Slot mine{head, static_cast<uint32_t>(id + 1), len_field(t.size()),
                    static_cast<uint16_t>(h >> 48)};
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.id1 == 0 || (s.tag == mine.tag && s.head == mine.head && s.len == mine.len &&
                         texts[s.id1 - 1] == t)) {
        s = mine;  // a later duplicate replaces the earlier id
        break;
      }
    }
  }
}

TokenId TokenIndex::find(std::string_view s, const std::vector<std::string>& texts) const {
  if (slots_.empty()) return -1;
  const uint64_t head = head_of(s);
  const uint64_t h = hash_bytes(s, head);
  const auto tag = static_cast<uint16_t>(h >> 48);
  const uint16_t len = len_field(s.size());
  for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& slot = slots_[i];
    if (slot.id1 == 0) return -1;
    if (slot.tag == tag && slot.head == head && slot.len == len) {
      const auto id = static_cast<TokenId>(slot.id1 - 1);
      if (s.size() <= 8 || std::string_view(texts[id]).substr(8) == s.substr(8)) return id;
    }
  }
}

VocabTokenizer::VocabTokenizer(VocabData data) : data_(std::move(data)) {
  const size_t n = data_.tokens.size();
  index_.build(data_.tokens);

  eog_.assign(n, false);
  for (auto id : {data_.eos, data_.eot, data_.eom}) {
    if (id) eog_[*id] = true;
  }
  for (auto t : kEogTexts) {
    const TokenId id = lookup(t);
    if (id < 0) continue;
    eog_[id] = true;
    data_.types[id] = TokenType::Control;
  }
  // llama.cpp's two exceptions: with <|return|> and <|call|> (or <|calls|> and
  // <|flush|>) present, <|end|> is an ordinary user-defined token; with <|tool_response>
  // (or <|plamo:eos|>) among the end tokens, </s> is a normal token.
  auto is_eog_text = [&](std::string_view t) {
    const TokenId id = lookup(t);
    return id >= 0 && eog_[id];
  };
  if (is_eog_text("<|end|>") && ((is_eog_text("<|return|>") && is_eog_text("<|call|>")) ||
                                 (is_eog_text("<|calls|>") && is_eog_text("<|flush|>")))) {
    const TokenId id = lookup("<|end|>");
    eog_[id] = false;
    data_.types[id] = TokenType::UserDefined;
  }
  if (is_eog_text("</s>") && (is_eog_text("<|tool_response>") || is_eog_text("<|plamo:eos|>"))) {
    const TokenId id = lookup("</s>");
    eog_[id] = false;
    data_.types[id] = TokenType::Normal;
  }

  for (size_t i = 0; i < n; ++i) {
    const TokenType t = data_.types[i];
    if ((t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) &&
        !data_.tokens[i].empty()) {
      specials_.push_back(static_cast<TokenId>(i));
    }
  }
  // Not a stable sort, on purpose: llama.cpp orders its special tokens with std::sort
  // from the same starting order, so equal lengths end up in the same order here.
  std::sort(specials_.begin(), specials_.end(),
            [&](TokenId a, TokenId b) { return data_.tokens[a].size() > data_.tokens[b].size(); });
  build_special_trie();
  add_bos_ = data_.add_bos.value_or(false);
  add_eos_ = data_.add_eos.value_or(false);
}

void VocabTokenizer::build_special_trie() {
  // Built with ordered maps, then flattened into sorted edge lists.
  std::vector<std::map<uint8_t, int32_t>> children(1);
  std::vector<TrieNode> nodes(1);
  for (size_t rank = 0; rank < specials_.size(); ++rank) {
    const TokenId id = specials_[rank];
    int32_t node = 0;
    for (char c : data_.tokens[id]) {
      const auto b = static_cast<uint8_t>(c);
      auto it = children[node].find(b);
      if (it == children[node].end()) {
        const auto child = static_cast<int32_t>(nodes.size());
        children[node].emplace(b, child);
        children.emplace_back();
        nodes.emplace_back();
        node = child;
      } else {
        node = it->second;
      }
    }
    // The first rank wins: a later token with the same text never finds anything left.
    if (nodes[node].rank_any < 0) nodes[node].rank_any = static_cast<int32_t>(rank);
    if (data_.types[id] == TokenType::UserDefined && nodes[node].rank_user < 0) {
      nodes[node].rank_user = static_cast<int32_t>(rank);
    }
  }
  trie_edges_.clear();
  for (size_t i = 0; i < nodes.size(); ++i) {
    nodes[i].first_edge = static_cast<int32_t>(trie_edges_.size());
    nodes[i].n_edges = static_cast<int32_t>(children[i].size());
    for (const auto& [b, child] : children[i]) trie_edges_.push_back({b, child});
  }
  trie_nodes_ = std::move(nodes);
  trie_root_.fill(-1);
  for (const auto& [b, child] : children[0]) trie_root_[b] = child;
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
  const TokenId id = lookup(text);
  if (id < 0) return std::nullopt;
  return id;
}

std::vector<Fragment> VocabTokenizer::partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  const size_t n = text.size();

  // Every occurrence of every special token that may take part: (rank, position).
  struct Occurrence {
    int32_t rank;
    size_t pos;
  };
  std::vector<Occurrence> occ;
  for (size_t p = 0; p < n; ++p) {
    int32_t node = trie_root_[static_cast<uint8_t>(text[p])];
    size_t q = p + 1;
    while (node >= 0) {
      const TrieNode& nd = trie_nodes_[node];
      const int32_t rank = parse_special ? nd.rank_any : nd.rank_user;
      if (rank >= 0) occ.push_back({rank, p});
      if (q >= n || nd.n_edges == 0) break;
      const auto b = static_cast<uint8_t>(text[q]);
      const TrieEdge* first = trie_edges_.data() + nd.first_edge;
      const TrieEdge* last = first + nd.n_edges;
      const TrieEdge* e =
          std::lower_bound(first, last, b, [](const TrieEdge& x, uint8_t v) { return x.byte < v; });
      node = (e != last && e->byte == b) ? e->child : -1;
      ++q;
    }
  }
  if (occ.empty()) {
    frags.push_back({text, -1});
    return frags;
  }

  // By rank (a counting sort keeps positions increasing within a rank), then claimed in
  // rank order. Ranks run by decreasing length, so a claimed span overlapping the
  // candidate [p, p + len) is at least as long and holds its first or its last byte.
  std::vector<uint32_t> start(specials_.size() + 1, 0);
  for (const Occurrence& o : occ) ++start[o.rank + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<size_t> by_rank(occ.size());  // [n_occurrence] positions grouped by rank
  {
    std::vector<uint32_t> fill(start.begin(), start.end() - 1);
    for (const Occurrence& o : occ) by_rank[fill[o.rank]++] = o.pos;
  }
  std::vector<uint8_t> claimed(n, 0);  // [n] byte belongs to a claimed special token
  std::vector<std::pair<size_t, TokenId>> matches;
  for (size_t rank = 0; rank < specials_.size(); ++rank) {
    if (start[rank] == start[rank + 1]) continue;
    const TokenId id = specials_[rank];
    const size_t len = data_.tokens[id].size();
    for (uint32_t k = start[rank]; k < start[rank + 1]; ++k) {
      const size_t p = by_rank[k];
      if (claimed[p] || claimed[p + len - 1]) continue;
      std::fill(claimed.begin() + static_cast<std::ptrdiff_t>(p),
                claimed.begin() + static_cast<std::ptrdiff_t>(p + len), 1);
      matches.emplace_back(p, id);
    }
  }
  std::sort(matches.begin(), matches.end());
  size_t at = 0;
  for (const auto& [p, id] : matches) {
    if (p > at) frags.push_back({text.substr(at, p - at), -1});
    frags.push_back({{}, id});
    at = p + data_.tokens[id].size();
  }
  if (at < n) frags.push_back({text.substr(at), -1});
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
  bool after_special = !opts.continues_text;
  for (const Fragment& f : partition(text, opts.parse_special)) {
    if (f.id >= 0) {
      out.push_back(f.id);
      after_special = true;
    } else {
      encode_text(f.text, after_special, out);
      after_special = false;
    }
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
