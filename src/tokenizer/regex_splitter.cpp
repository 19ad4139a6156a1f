#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex_splitter.h"

#include <pcre2.h>

#include <string>

#include "spillway/core/error.h"

namespace spillway::tokenizer_detail {

struct RegexSplitter::Code {
  pcre2_code* code = nullptr;
  std::string expression;
  ~Code() { pcre2_code_free(code); }
};

namespace {

std::string pcre2_message(int err) {
  PCRE2_UCHAR buf[256];
  const int n = pcre2_get_error_message(err, buf, sizeof buf);
  return n < 0 ? "error " + std::to_string(err) : std::string(reinterpret_cast<char*>(buf));
}

struct MatchData {
  explicit MatchData(const pcre2_code* code)
      : md(pcre2_match_data_create_from_pattern(code, nullptr)) {}
  ~MatchData() { pcre2_match_data_free(md); }
  pcre2_match_data* md;
};

// Length in bytes of the UTF-8 character that starts with `lead`.
size_t char_len(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

}  // namespace

RegexSplitter::RegexSplitter(const std::vector<std::string>& expressions) {
  for (const auto& e : expressions) {
    auto c = std::make_unique<Code>();
    c->expression = e;
    int err = 0;
    PCRE2_SIZE err_off = 0;
    c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(e.data()), e.size(), PCRE2_UTF | PCRE2_UCP,
                            &err, &err_off, nullptr);
    if (!c->code) {
      throw UnsupportedError("pre-tokenizer regex '" + e + "' does not compile at offset " +
                             std::to_string(err_off) + ": " + pcre2_message(err));
    }
    // JIT is an optimization; the interpreter serves when it is unavailable.
    pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE);
    codes_.push_back(std::move(c));
  }
}

RegexSplitter::~RegexSplitter() = default;

void RegexSplitter::split(std::string_view subject, std::vector<Span>& out) const {
  std::vector<Span> cur{{0, subject.size()}};
  std::vector<Span> next;
  if (subject.empty()) return;
  for (const auto& c : codes_) {
    MatchData md(c->code);
    if (!md.md) throw Error("pre-tokenizer: out of memory for PCRE2 match data");
    next.clear();
    next.reserve(cur.size() * 2);
    for (const Span& piece : cur) {
      // Each piece is matched on its own: lookarounds and anchors see only the piece.
      const auto* base = reinterpret_cast<PCRE2_SPTR>(subject.data() + piece.begin);
      const size_t len = piece.end - piece.begin;
      size_t pos = 0;
      size_t gap = 0;  // start of unmatched text
      while (pos < len) {
        const int rc = pcre2_match(c->code, base, len, pos, PCRE2_NO_UTF_CHECK, md.md, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          throw Error("pre-tokenizer regex '" + c->expression + "' failed: " + pcre2_message(rc));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.md);
        const size_t m0 = ov[0], m1 = ov[1];
        if (m1 == m0) {  // empty match: step over one character
          pos = m0 + char_len(static_cast<unsigned char>(base[m0]));
          continue;
        }
        if (m0 > gap) next.push_back({piece.begin + gap, piece.begin + m0});
        next.push_back({piece.begin + m0, piece.begin + m1});
        gap = pos = m1;
      }
      if (gap < len) next.push_back({piece.begin + gap, piece.end});
    }
    cur.swap(next);
  }
  out.insert(out.end(), cur.begin(), cur.end());
}

}  // namespace spillway::tokenizer_detail
