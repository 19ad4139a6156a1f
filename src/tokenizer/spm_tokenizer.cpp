#include "spm_tokenizer.h"

#include <algorithm>
#include <cstring>

#include "spillway/core/error.h"

namespace spillway::tokenizer_detail {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// A fragment longer than this is refused (symbol indices are 32-bit; escaping can triple
// the size).
constexpr size_t kMaxFragmentBytes = size_t{512} << 20;

// Length of the character a lead byte starts, judged by its high four bits only (as the
// reference does): 0xxx and 10xx one byte, 110x two, 1110 three, 1111 four.
size_t lead_length(char c) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[static_cast<uint8_t>(c) >> 4];
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte a "<0xHH>" text stands for, or -1 for any other text.
int byte_of_text(std::string_view t) {
  if (t.size() != 6 || !t.starts_with("<0x") || t.back() != '>') return -1;
  const int hi = hex_value(t[3]), lo = hex_value(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// A run of the fragment: bytes [begin, begin + len); len 0 once merged into its left
// neighbour. prev/next link the live symbols.
struct Symbol {
  uint32_t begin;
  uint32_t len;
  int32_t prev;
  int32_t next;
};

// Adjacent symbols whose concatenation (len bytes) is a token of the given score. Stale
// once either symbol changed, which shows as a different total length.
struct Bigram {
  float score;
  int32_t left;
  int32_t right;
  uint32_t len;
};

// Heap order: the highest score on top; on equal scores the leftmost pair. Counts its
// calls (the merge loop's work) for spm_comparisons().
thread_local uint64_t t_comparisons = 0;
struct LowerPriority {
  bool operator()(const Bigram& a, const Bigram& b) const {
    ++t_comparisons;
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};
constexpr LowerPriority lower_priority;

}  // namespace

uint64_t spm_comparisons() {
  return t_comparisons;
}

SpmTokenizer::SpmTokenizer(VocabData data) : VocabTokenizer(std::move(data)) {
  set_add_bos_default(true);
  add_space_prefix_ = data_.add_space_prefix.value_or(true);
  if (data_.scores.empty()) data_.scores.assign(data_.tokens.size(), 0.0f);
  for (const std::string& t : data_.tokens) max_token_bytes_ = std::max(max_token_bytes_, t.size());
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char text[6] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    TokenId id = lookup(std::string_view(text, 6));
    if (id < 0) {
      const char c = static_cast<char>(b);
      id = lookup(std::string_view(&c, 1));
    }
    byte_token_[b] = id;
  }
}

void SpmTokenizer::encode_text(std::string_view text, bool after_special,
                               std::vector<TokenId>& out) const {
  if (text.empty()) return;
  if (text.size() > kMaxFragmentBytes) {
    throw InvalidArgument(data_.source + ": a text run of " + std::to_string(text.size()) +
                          " bytes without special tokens is too long to tokenize (limit " +
                          std::to_string(kMaxFragmentBytes) + " bytes)");
  }
  // [n_escaped] the fragment with spaces as U+2581 (and the prefix space).
  std::string s;
  s.reserve(text.size() + text.size() / 2 + kSpaceMark.size());
  if (add_space_prefix_ && after_special) s += kSpaceMark;
  for (size_t i = 0; i < text.size();) {
    const size_t sp = text.find(' ', i);
    const size_t stop = sp == std::string_view::npos ? text.size() : sp;
    s.append(text.data() + i, stop - i);
    if (sp == std::string_view::npos) break;
    s += kSpaceMark;
    i = sp + 1;
  }

  std::vector<Symbol> sym;  // [n_symbol]
  sym.reserve(s.size());
  for (size_t off = 0; off < s.size();) {
    const size_t len = std::min(lead_length(s[off]), s.size() - off);
    const auto i = static_cast<int32_t>(sym.size());
    sym.push_back({static_cast<uint32_t>(off), static_cast<uint32_t>(len), i - 1, i + 1});
    off += len;
  }
  sym.back().next = -1;

  std::vector<Bigram> heap;  // [n_candidate] max-heap by lower_priority
  heap.reserve(sym.size());
  const std::string_view sv(s);
  auto candidate = [&](int32_t l, int32_t r, Bigram& b) {
    if (l < 0 || r < 0) return false;
    const size_t len = size_t{sym[l].len} + sym[r].len;
    if (len > max_token_bytes_) return false;
    const TokenId id = lookup(sv.substr(sym[l].begin, len));
    if (id < 0) return false;
    b = {data_.scores[id], l, r, static_cast<uint32_t>(len)};
    return true;
  };
  Bigram b;
  for (size_t i = 1; i < sym.size(); ++i) {
    if (candidate(static_cast<int32_t>(i - 1), static_cast<int32_t>(i), b)) heap.push_back(b);
  }
  std::make_heap(heap.begin(), heap.end(), lower_priority);
  auto push = [&](int32_t l, int32_t r) {
    if (!candidate(l, r, b)) return;
    heap.push_back(b);
    std::push_heap(heap.begin(), heap.end(), lower_priority);
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower_priority);
    const Bigram top = heap.back();
    heap.pop_back();
    Symbol& left = sym[top.left];
    Symbol& right = sym[top.right];
    if (left.len == 0 || right.len == 0 || left.len + right.len != top.len) continue;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = top.left;
    push(left.prev, top.left);
    push(top.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = sym[i].next) {
    const std::string_view piece = sv.substr(sym[i].begin, sym[i].len);
    const TokenId id = lookup(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    // Not a token (merged pieces always are): a single character, by its bytes.
    const bool all_bytes = std::all_of(piece.begin(), piece.end(), [&](char c) {
      return byte_token_[static_cast<uint8_t>(c)] >= 0;
    });
    if (all_bytes) {
      for (char c : piece) out.push_back(byte_token_[static_cast<uint8_t>(c)]);
    } else if (data_.unk) {
      out.push_back(*data_.unk);
    }
  }
}

void SpmTokenizer::append_bytes(TokenId id, std::string& out) const {
  const std::string& text = data_.tokens[id];
  switch (data_.types[id]) {
    case TokenType::Normal:
      for (size_t i = 0; i < text.size();) {
        const size_t at = text.find(kSpaceMark, i);
        const size_t stop = at == std::string::npos ? text.size() : at;
        out.append(text, i, stop - i);
        if (at == std::string::npos) break;
        out.push_back(' ');
        i = at + kSpaceMark.size();
      }
      break;
    case TokenType::Byte: {
      const int b = byte_of_text(text);
      if (b >= 0)
        out.push_back(static_cast<char>(b));
      else
        out += text;  // a byte token not written <0xHH>: its text
      break;
    }
    case TokenType::Control:
    case TokenType::UserDefined:
    case TokenType::Unknown:
      out += text;
      break;
    default:
      break;  // unused / undefined tokens print nothing
  }
}

std::string SpmTokenizer::token_bytes(TokenId id) const {
  check_id(id);
  std::string out;
  append_bytes(id, out);
  return out;
}

std::string SpmTokenizer::decode(std::span<const TokenId> ids, bool keep_control) const {
  size_t begin = 0, end = ids.size();
  bool strip_space = add_space_prefix_;
  if (!keep_control && add_bos() && data_.bos && end > 0 && ids[0] == *data_.bos) {
    strip_space = false;
    begin = 1;
  }
  if (!keep_control && add_eos_default() && data_.eos && end > begin &&
      ids[end - 1] == *data_.eos) {
    --end;
  }
  std::string out;
  for (size_t i = begin; i < end; ++i) {
    const TokenId id = ids[i];
    check_id(id);
    const TokenType t = data_.types[id];
    const size_t mark = out.size();
    if (keep_control || (t != TokenType::Control && t != TokenType::Unknown)) append_bytes(id, out);
    if (strip_space && out.size() > mark && out[mark] == ' ') out.erase(mark, 1);
    strip_space = false;
  }
  return out;
}

}  // namespace spillway::tokenizer_detail
