// Pre-tokenization by a chain of PCRE2 regexes (UTF + UCP), the way llama.cpp applies
// the expressions of a pre-tokenizer: each expression splits every piece the previous
// one produced into its matches and the unmatched text between them (both kept).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace spillway::tokenizer_detail {

// Byte range [begin, end) of a piece in the subject text.
struct Span {
  size_t begin;
  size_t end;
};

class RegexSplitter {
 public:
  // Compiles the expressions (JIT when available). Throws UnsupportedError naming the
  // expression and PCRE2's message when one does not compile.
  explicit RegexSplitter(const std::vector<std::string>& expressions);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Splits `subject` (precondition: well-formed UTF-8) into pieces that cover it in
  // order, appending them to `out`. Thread-safe.
  void split(std::string_view subject, std::vector<Span>& out) const;

  size_t size() const { return codes_.size(); }

 private:
  struct Code;
  std::vector<std::unique_ptr<Code>> codes_;
};

}  // namespace spillway::tokenizer_detail
