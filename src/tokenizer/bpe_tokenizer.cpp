#include "bpe_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "spillway/core/error.h"
#include "utf8.h"

namespace spillway::tokenizer_detail {

namespace {

// llama.cpp's whitespace set (its \s): ASCII \t\n\v\f\r and space, NEL, and the Unicode
// space separators. Spelled out so the result does not depend on PCRE2's Unicode
// version or on whether its \s takes in U+0085.
#define SPW_WS         \
  "\\t\\n\\x0B\\f\\r " \
  "\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

// GPT-2's expression (with the final \s+ that its reference implementation has).
const char* const kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" SPW_WS
                          "\\p{L}\\p{N}]+|[" SPW_WS "]+(?![^" SPW_WS "])|[" SPW_WS "]+";

// Llama 3 and Qwen 2 differ only in how many digits a number piece may hold.
std::string llama3_like(const char* digits) {
  return std::string(
             "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{"
             "L}+|") +
         digits +
         "| ?[^" SPW_WS "\\p{L}\\p{N}]+[\\r\\n]*|[" SPW_WS "]*[\\r\\n]+|[" SPW_WS "]+(?![^" SPW_WS
         "])|[" SPW_WS "]+";
}

#undef SPW_WS

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Inverse of byte_to_piece_char: code point -> byte (-1 when not in the mapping).
int byte_of_codepoint(uint32_t cpt) {
  static const std::vector<int> table = [] {
    std::vector<int> t(324, -1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      t[printable ? b : 256 + extra++] = b;
    }
    return t;
  }();
  return cpt < table.size() ? table[cpt] : -1;
}

// Decodes one well-formed UTF-8 character of s at i (advancing i); nullopt otherwise.
std::optional<uint32_t> next_codepoint(std::string_view s, size_t& i) {
  const auto b = static_cast<uint8_t>(s[i]);
  size_t n = b < 0x80 ? 1 : b < 0xC0 ? 0 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : b < 0xF8 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return std::nullopt;
  uint32_t c = n == 1 ? b : (b & (0x7F >> n));
  for (size_t k = 1; k < n; ++k) {
    const auto cb = static_cast<uint8_t>(s[i + k]);
    if ((cb & 0xC0) != 0x80) return std::nullopt;
    c = (c << 6) | (cb & 0x3F);
  }
  i += n;
  return c;
}

// Raw bytes of a byte-encoded piece; nullopt when a character is outside the mapping.
std::optional<std::string> piece_to_bytes(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  size_t i = 0;
  while (i < piece.size()) {
    const auto c = next_codepoint(piece, i);
    if (!c) return std::nullopt;
    const int b = byte_of_codepoint(*c);
    if (b < 0) return std::nullopt;
    out.push_back(static_cast<char>(b));
  }
  return out;
}

}  // namespace

std::optional<PreTokenizerSpec> pre_tokenizer_spec(std::string_view pre) {
  auto is = [&](std::initializer_list<std::string_view> names) {
    return std::find(names.begin(), names.end(), pre) != names.end();
  };
  PreTokenizerSpec s;
  if (is({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})) {
    s.family = "smollm";
    s.expressions = {"\\p{N}", kGpt2};
  } else if (is({"gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"})) {
    s.family = "gpt2";
    s.expressions = {kGpt2};
  } else if (is({"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"})) {
    s.family = "llama3";
    s.expressions = {llama3_like("\\p{N}{1,3}")};
    s.ignore_merges = true;
    s.add_bos = true;
  } else if (is({"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"})) {
    s.family = "qwen2";
    s.expressions = {llama3_like("\\p{N}")};
  } else if (is({"default", ""})) {
    s.family = "default";
    s.expressions = {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"};
  } else {
    return std::nullopt;
  }
  return s;
}

const std::array<std::string, 256>& byte_to_piece_char() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      append_utf8(t[b],
                  printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++));
    }
    return t;
  }();
  return table;
}

struct BpeTokenizer::Workspace {
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index
    int32_t right;
    int32_t result;
    uint64_t key;  // (left id, right id) when queued: stale when the ids changed
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::vector<Span> spans;
};

BpeTokenizer::BpeTokenizer(VocabData data) : VocabTokenizer(std::move(data)) {
  auto spec = pre_tokenizer_spec(data_.pre);
  if (!spec) {
    throw UnsupportedError(data_.source + ": tokenizer.ggml.pre = '" + data_.pre +
                           "' is not a supported pre-tokenizer (supported: smollm, gpt2, llama3, "
                           "llama-bpe, qwen2, default and their aliases)");
  }
  spec_ = std::move(*spec);
  splitter_ = std::make_unique<RegexSplitter>(spec_.expressions);
  set_add_bos_default(spec_.add_bos);

  n_vocab_ = vocab_size();
  const auto& b2c = byte_to_piece_char();
  symbol_by_bytes_.reserve(static_cast<size_t>(n_vocab_) * 2);
  bytes_of_.resize(n_vocab_);
  for (int32_t id = 0; id < n_vocab_; ++id) {
    const std::string& text = data_.tokens[id];
    auto raw = piece_to_bytes(text);
    // A token is reachable by merging only when its text is made of mapped characters;
    // later duplicates win, as in the text lookup.
    if (raw) symbol_by_bytes_[*raw] = id;
    switch (data_.types[id]) {
      case TokenType::Normal:
        if (raw) {
          bytes_of_[id] = *raw;
        } else {
          // Characters outside the byte mapping stand for themselves.
          std::string s;
          size_t i = 0;
          while (i < text.size()) {
            const size_t start = i;
            const auto c = next_codepoint(text, i);
            if (!c) {
              s.push_back(text[start]);
              i = start + 1;
              continue;
            }
            const int b = byte_of_codepoint(*c);
            if (b >= 0)
              s.push_back(static_cast<char>(b));
            else
              s.append(text, start, i - start);
          }
          bytes_of_[id] = std::move(s);
        }
        break;
      case TokenType::Control:
      case TokenType::UserDefined:
      case TokenType::Unknown:
        bytes_of_[id] = text;
        break;
      case TokenType::Byte:
        if (text.size() == 6 && text.starts_with("<0x") && text.back() == '>') {
          bytes_of_[id] =
              std::string(1, static_cast<char>(std::stoi(text.substr(3, 2), nullptr, 16)));
        }
        break;
      default:
        break;  // unused / undefined tokens decode to nothing
    }
  }
  for (int b = 0; b < 256; ++b) byte_symbol_[b] = symbol_for(std::string(1, static_cast<char>(b)));
  (void)b2c;

  merges_.reserve(data_.merges.size() * 2);
  for (size_t rank = 0; rank < data_.merges.size(); ++rank) {
    const std::string& m = data_.merges[rank];
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) continue;  // llama.cpp ignores such entries too
    auto left = piece_to_bytes(std::string_view(m).substr(0, sp));
    auto right = piece_to_bytes(std::string_view(m).substr(sp + 1));
    if (!left || !right || left->empty() || right->empty()) continue;  // cannot occur in text
    const int32_t l = symbol_for(*left);
    const int32_t r = symbol_for(*right);
    const int32_t res = symbol_for(*left + *right);
    merges_.try_emplace(pair_key(l, r), Merge{static_cast<int32_t>(rank), res});
  }
}

int32_t BpeTokenizer::symbol_for(const std::string& bytes) {
  auto it = symbol_by_bytes_.find(bytes);
  if (it != symbol_by_bytes_.end()) return it->second;
  const auto id = static_cast<int32_t>(n_vocab_ + virtual_bytes_.size());
  virtual_bytes_.push_back(bytes);
  symbol_by_bytes_.emplace(bytes, id);
  return id;
}

std::string BpeTokenizer::token_bytes(TokenId id) const {
  check_id(id);
  return bytes_of_[id];
}

void BpeTokenizer::emit(int32_t sym, std::vector<TokenId>& out) const {
  if (sym < n_vocab_) {
    out.push_back(sym);
    return;
  }
  // Not in the vocabulary: llama.cpp looks up each byte of the byte-encoded text as a
  // one-character token and drops the ones it does not find.
  const auto& b2c = byte_to_piece_char();
  for (char b : virtual_bytes_[sym - n_vocab_]) {
    for (char c : b2c[static_cast<uint8_t>(b)]) {
      const TokenId id = lookup(std::string_view(&c, 1));
      if (id >= 0) out.push_back(id);
    }
  }
}

void BpeTokenizer::encode_piece(std::string_view bytes, std::vector<TokenId>& out,
                                Workspace& ws) const {
  const size_t n = bytes.size();
  if (n == 0) return;
  if (spec_.ignore_merges) {
    auto it = symbol_by_bytes_.find(std::string(bytes));
    if (it != symbol_by_bytes_.end() && it->second < n_vocab_) {
      out.push_back(it->second);
      return;
    }
  }
  if (n == 1) {
    emit(byte_symbol_[static_cast<uint8_t>(bytes[0])], out);
    return;
  }
  auto& syms = ws.symbols;
  auto& heap = ws.heap;
  syms.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i) {
    syms[i] = {byte_symbol_[static_cast<uint8_t>(bytes[i])], static_cast<int32_t>(i) - 1,
               i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  }
  // Min-heap on (rank, left index): the lowest rank merges first, leftmost on ties.
  auto later = [](const Workspace::Candidate& a, const Workspace::Candidate& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const uint64_t key = pair_key(syms[l].id, syms[r].id);
    auto it = merges_.find(key);
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, l, r, it->second.result, key});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (size_t i = 0; i + 1 < n; ++i) try_add(static_cast<int32_t>(i), static_cast<int32_t>(i + 1));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const auto c = heap.back();
    heap.pop_back();
    auto& L = syms[c.left];
    auto& R = syms[c.right];
    if (L.id < 0 || R.id < 0 || L.next != c.right || pair_key(L.id, R.id) != c.key) continue;
    L.id = c.result;
    R.id = -1;
    L.next = R.next;
    if (R.next >= 0) syms[R.next].prev = c.left;
    try_add(L.prev, c.left);
    try_add(c.left, L.next);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) emit(syms[i].id, out);
}

void BpeTokenizer::encode_text(std::string_view text, bool /*after_special*/,
                               std::vector<TokenId>& out) const {
  if (text.empty()) return;
  Workspace ws;
  std::string norm, subject;
  std::string_view t = text, subj = text;
  if (!is_valid_utf8(text)) {
    normalize_like_reference(text, norm, subject);
    t = norm;
    subj = subject;
  }
  splitter_->split(subj, ws.spans);
  for (const Span& s : ws.spans) encode_piece(t.substr(s.begin, s.end - s.begin), out, ws);
}

std::vector<std::string> BpeTokenizer::pretokenize(std::string_view text) const {
  std::vector<std::string> pieces;
  std::string norm, subject;
  std::string_view t = text, subj = text;
  if (!is_valid_utf8(text)) {
    normalize_like_reference(text, norm, subject);
    t = norm;
    subj = subject;
  }
  std::vector<Span> spans;
  splitter_->split(subj, spans);
  for (const Span& s : spans) pieces.emplace_back(t.substr(s.begin, s.end - s.begin));
  return pieces;
}

}  // namespace spillway::tokenizer_detail
