// libFuzzer target for the tokenizers of the two real models (byte-level BPE of SmolLM2,
// SentencePiece of Gemma 3), each loaded once from models/. The first input byte picks
// what the rest is: text to encode (with or without special-token parsing) by either
// tokenizer, or token ids (4 bytes each, any value) to decode and stream-decode. Encoding
// must not fail on any bytes; valid UTF-8 without special tokens, made of bytes the
// vocabulary has tokens for, must round-trip through the BPE tokenizer exactly; decoding ids
// outside the vocabulary must throw spillway::Error, never read outside it.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"

namespace {

struct Loaded {
  std::unique_ptr<spillway::gguf::GgufFile> file;
  std::unique_ptr<spillway::Tokenizer> tok;
};

std::string models_dir() {
  if (const char* d = std::getenv("SPILLWAY_MODELS_DIR")) return d;
  return std::string(SPILLWAY_SOURCE_DIR) + "/models";
}

// nullptr when the model file is absent (the replay then has nothing to run).
const spillway::Tokenizer* load(const char* name) {
  Loaded l;
  const std::string path = models_dir() + "/" + name;
  try {
    l.file = spillway::gguf::GgufFile::open(path);
  } catch (const spillway::IoError&) {
    std::fprintf(stderr, "tokenizer_fuzz: %s not found\n", path.c_str());
    return nullptr;
  }
  l.tok = spillway::Tokenizer::from_gguf(*l.file);
  static std::deque<Loaded> kept;  // lives for the process
  kept.push_back(std::move(l));
  return kept.back().tok.get();
}

// Bytes whose own token exists in the BPE vocabulary: a byte without one is dropped by
// encode (as llama.cpp drops it; SmolLM2 lacks some control characters), so the
// round-trip property holds only for texts made of the others.
std::array<bool, 256>& byte_has_token() {
  static std::array<bool, 256> has{};
  return has;
}

bool all_bytes_have_tokens(std::string_view s) {
  for (char c : s)
    if (!byte_has_token()[static_cast<uint8_t>(c)]) return false;
  return true;
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<uint8_t>(s[i + k]);
      if ((d >> 6) != 2) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const spillway::Tokenizer* bpe = load("SmolLM2-135M-Instruct.Q4_1.gguf");
  static const spillway::Tokenizer* spm = load("gemma-3-270m-q4_k_m.gguf");
  static const bool init_bytes = [] {
    if (bpe)
      for (int b = 0; b < 256; ++b) {
        const std::string one(1, static_cast<char>(b));
        spillway::EncodeOptions o;
        o.add_bos = false;
        byte_has_token()[b] = bpe->decode(bpe->encode(one, o), true) == one;
      }
    return true;
  }();
  (void)init_bytes;
  if (size < 1) return 0;
  const uint8_t mode = data[0] % 8;
  const spillway::Tokenizer* tok = (mode & 1) ? spm : bpe;
  if (!tok) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode < 4) {
    spillway::EncodeOptions o;
    o.parse_special = mode >= 2;
    o.add_bos = false;
    const std::vector<spillway::TokenId> ids = tok->encode(rest, o);
    for (spillway::TokenId id : ids)
      if (id < 0 || id >= tok->vocab_size()) __builtin_trap();
    const std::string back = tok->decode(ids, true);
    if (tok == bpe && !o.parse_special && valid_utf8(rest) && all_bytes_have_tokens(rest) &&
        back != rest)
      __builtin_trap();
    return 0;
  }
  std::vector<spillway::TokenId> ids(rest.size() / 4);
  if (!ids.empty()) std::memcpy(ids.data(), rest.data(), ids.size() * 4);
  if (mode >= 6)  // mostly valid ids, so decoding gets past the range check
    for (auto& id : ids)
      id = static_cast<spillway::TokenId>(static_cast<uint32_t>(id) % tok->vocab_size());
  try {
    (void)tok->decode(ids, mode & 2);
  } catch (const spillway::Error&) {
  }
  try {
    spillway::StreamDecoder dec(*tok);
    std::string out;
    for (spillway::TokenId id : ids) out += dec.push(id);
    out += dec.flush();
    if (!valid_utf8(out)) __builtin_trap();
  } catch (const spillway::Error&) {
  }
  for (spillway::TokenId id : ids) {
    try {
      (void)tok->token_bytes(id);
      (void)tok->piece(id);
      (void)tok->token_type(id);
    } catch (const spillway::Error&) {
    }
  }
  return 0;
}
