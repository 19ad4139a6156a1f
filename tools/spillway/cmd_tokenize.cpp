// spillway tokenize [--model MODEL] (--text STR | --file F) [--json] [--special]
// [--bos | --no-bos]: the token ids of a text under the model's tokenizer, with each
// token's vocabulary entry (piece) and the bytes it stands for (text). BOS is prepended
// when the model's metadata asks for it (tokenizer.ggml.add_bos_token), as llama.cpp's
// llama-tokenize and Hugging Face tokenizers do, unless --bos or --no-bos says otherwise.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"
#include "util.h"

namespace spillway::cli {
namespace {

struct TokenizeOptions {
  std::string model = kDefaultModel;
  std::optional<std::string> text;
  std::optional<std::string> file;
  bool json = false;
  bool special = false;
  std::optional<bool> bos;  // nullopt: as the model's metadata says
};

// Printable on one line: control characters and bytes that are not valid UTF-8 escaped.
std::string escape(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b == '\n') {
      out += "\\n";
    } else if (b == '\t') {
      out += "\\t";
    } else if (b == '\r') {
      out += "\\r";
    } else if (b == '\\') {
      out += "\\\\";
    } else if (b < 0x20 || b == 0x7f) {
      out += fmt::format("\\x{:02x}", b);
    } else if (b < 0x80) {
      out += static_cast<char>(b);
    } else {
      const size_t n = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 0;
      bool ok = n > 0 && i + n <= s.size();
      for (size_t k = 1; ok && k < n; ++k)
        ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
      if (!ok) {
        out += fmt::format("\\x{:02x}", b);
      } else {
        out.append(s, i, n);
        i += n;
        continue;
      }
    }
    ++i;
  }
  return out;
}

int run_tokenize(const TokenizeOptions& o) {
  std::string text = o.text ? *o.text : read_file(*o.file);
  auto file = gguf::GgufFile::open(o.model);
  auto tok = Tokenizer::from_gguf(*file);
  EncodeOptions eo;
  eo.parse_special = o.special;
  eo.add_bos = o.bos;
  const auto ids = tok->encode(text, eo);

  if (o.json) {
    nlohmann::ordered_json tokens = nlohmann::ordered_json::array();
    for (TokenId id : ids) {
      tokens.push_back({{"id", id}, {"piece", tok->piece(id)}, {"text", tok->token_bytes(id)}});
    }
    nlohmann::ordered_json out;
    out["tokens"] = std::move(tokens);
    out["count"] = ids.size();
    // A token may stand for part of a UTF-8 character: replace what is not valid.
    fmt::print("{}\n", out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
    return 0;
  }
  for (TokenId id : ids) {
    fmt::print("{}\t{}\t{}\n", id, escape(tok->piece(id)), escape(tok->token_bytes(id)));
  }
  fmt::print("{} token{}\n", ids.size(), ids.size() == 1 ? "" : "s");
  return 0;
}

const Registrar kTokenize("tokenize", [](CLI::App& app) -> std::function<int()> {
  auto opts = std::make_shared<TokenizeOptions>();
  CLI::App* sub = app.add_subcommand(
      "tokenize", "Token ids of a text: id, vocabulary piece and bytes of each token");
  sub->add_option("-m,--model", opts->model, "GGUF file")->capture_default_str();
  auto* text = sub->add_option("-t,--text", opts->text, "Text to tokenize");
  auto* file = sub->add_option("-f,--file", opts->file, "File whose bytes to tokenize");
  text->excludes(file);
  file->excludes(text);
  sub->add_flag("--json", opts->json, "Print JSON: {\"tokens\":[{id,piece,text}],\"count\":N}");
  sub->add_flag("--special", opts->special,
                "Recognize special tokens written in the text (<|im_start|>)");
  auto* bos = sub->add_flag_callback(
      "--bos", [opts] { opts->bos = true; },
      "Prepend the BOS token (default: when the model's metadata asks for it)");
  auto* no_bos = sub->add_flag_callback(
      "--no-bos", [opts] { opts->bos = false; }, "Never prepend the BOS token");
  bos->excludes(no_bos);
  sub->callback([sub, opts] {
    if (!opts->text && !opts->file) throw CLI::RequiredError("--text or --file");
  });
  return [opts] { return run_tokenize(*opts); };
});

}  // namespace
}  // namespace spillway::cli
