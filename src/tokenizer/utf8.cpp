#include "utf8.h"

namespace spillway::tokenizer_detail {

namespace {

// One step of strict UTF-8 decoding at s[i]: the length of the well-formed sequence
// there, or of its maximal ill-formed subpart. `truncated`: the subpart is a valid
// prefix cut short by the end of `s`.
struct Scan {
  size_t len;
  bool valid;
  bool truncated;
};

Scan scan_strict(std::string_view s, size_t i) {
  const auto b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return {1, true, false};
  size_t n = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return {1, false, false};
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return {k, false, true};
    const auto c = static_cast<uint8_t>(s[i + k]);
    const uint8_t l = k == 1 ? lo : 0x80;
    const uint8_t h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) return {k, false, false};
  }
  return {n, true, false};
}

bool is_continuation(char c) {
  return (static_cast<uint8_t>(c) & 0xC0) == 0x80;
}

}  // namespace

void append_utf8(std::string& out, uint32_t cpt) {
  if (cpt < 0x80) {
    out.push_back(static_cast<char>(cpt));
  } else if (cpt < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cpt >> 6)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else if (cpt < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cpt >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cpt >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII runs dominate ordinary text: skip them eight bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w = 0;
      for (int k = 0; k < 8; ++k)
        w |= static_cast<uint64_t>(static_cast<uint8_t>(s[i + k])) << (8 * k);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= s.size()) break;
    const Scan sc = scan_strict(s, i);
    if (!sc.valid) return false;
    i += sc.len;
  }
  return true;
}

void normalize_like_reference(std::string_view in, std::string& text, std::string& subject) {
  text.clear();
  subject.clear();
  text.reserve(in.size() + 8);
  subject.reserve(in.size() + 8);
  size_t i = 0;
  const size_t n = in.size();
  auto emit = [&](uint32_t cpt) {
    if (cpt > 0x10FFFF) cpt = kReplacementChar;
    append_utf8(text, cpt);
    append_utf8(subject, (cpt >= 0xD800 && cpt <= 0xDFFF) ? kReplacementChar : cpt);
  };
  while (i < n) {
    const auto b = static_cast<uint8_t>(in[i]);
    if (b < 0x80) {
      emit(b);
      i += 1;
      continue;
    }
    // The reference classifies by the lead byte's high bits only.
    size_t len = 0;
    uint32_t cpt = 0;
    if (!(b & 0x40)) {
      len = 0;
    } else if (!(b & 0x20)) {
      len = 2;
      cpt = b & 0x1F;
    } else if (!(b & 0x10)) {
      len = 3;
      cpt = b & 0x0F;
    } else if (!(b & 0x08)) {
      len = 4;
      cpt = b & 0x07;
    }
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      if (!is_continuation(in[i + k]))
        ok = false;
      else
        cpt = (cpt << 6) | (static_cast<uint8_t>(in[i + k]) & 0x3F);
    }
    if (!ok) {
      emit(kReplacementChar);
      i += 1;
      continue;
    }
    emit(cpt);
    i += len;
  }
}

size_t utf8_complete_prefix(std::string_view s) {
  // Only the last three bytes can belong to a sequence that is still incomplete.
  const size_t first = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t i = s.size(); i-- > first;) {
    if (is_continuation(s[i])) continue;
    const Scan sc = scan_strict(s, i);
    return sc.truncated ? i : s.size();
  }
  return s.size();
}

std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const Scan sc = scan_strict(s, i);
    if (sc.valid) {
      out.append(s.substr(i, sc.len));
    } else {
      append_utf8(out, kReplacementChar);
    }
    i += sc.len;
  }
  return out;
}

}  // namespace spillway::tokenizer_detail
