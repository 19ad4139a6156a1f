// UTF-8 helpers shared by the tokenizers (private to the library).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace spillway::tokenizer_detail {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Appends the UTF-8 encoding of `cpt` (any value up to 0x10FFFF, surrogates included).
void append_utf8(std::string& out, uint32_t cpt);

// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or values past
// U+10FFFF, no truncated sequences).
bool is_valid_utf8(std::string_view s);

// Text as the reference tokenizer (llama.cpp) sees it: it decodes by the lead byte's
// length class alone, so an overlong form decodes to its code point (and is re-encoded
// in shortest form), while a stray continuation byte, a byte F8..FF or a truncated
// sequence becomes U+FFFD (one per offending lead byte). Surrogates keep their
// three-byte form in `text`; values past U+10FFFF (which the reference cannot encode)
// become U+FFFD. `subject` receives the same bytes with each surrogate replaced by
// U+FFFD (also three bytes), so it is valid UTF-8 for the regex engine and offsets in
// the two strings agree.
void normalize_like_reference(std::string_view in, std::string& text, std::string& subject);

// Length of the longest prefix of `s` that does not end inside a UTF-8 sequence that
// later bytes could still complete. Bytes that can never form a valid sequence count as
// complete (they are replaced when emitted).
size_t utf8_complete_prefix(std::string_view s);

// `s` with every ill-formed sequence replaced by U+FFFD (maximal subparts, as the
// Unicode standard recommends).
std::string replace_invalid_utf8(std::string_view s);

}  // namespace spillway::tokenizer_detail
