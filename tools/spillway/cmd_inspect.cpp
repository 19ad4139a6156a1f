// spillway inspect [MODEL] [--json]: what a GGUF file holds. Hyperparameters, general
// info, a tokenizer summary, the tensor table and totals by type, for people (tables) or
// as JSON. The file is fully validated by the reader first; a bad file is an error.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/core/error.h"
#include "spillway/core/types.h"
#include "spillway/gguf/gguf.h"
#include "util.h"

namespace spillway::cli {
namespace {

using gguf::GgufFile;
using gguf::Metadata;
using gguf::TensorInfo;
using gguf::Value;
using gguf::ValueType;
using nlohmann::ordered_json;

struct InspectOptions {
  std::string model_pos;
  std::string model_opt;
  bool json = false;
};

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// One line of text for a table: control characters escaped, long text cut.
std::string one_line(const std::string& s, size_t max_len = 72) {
  std::string out;
  for (char ch : s) {
    if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(ch));
    } else {
      out += ch;
    }
  }
  if (out.size() > max_len) {
    size_t cut = max_len;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xc0) == 0x80) --cut;  // UTF-8
    out = fmt::format("{}... ({} bytes)", out.substr(0, cut), s.size());
  }
  return out;
}

std::string show(const Value& v) {
  if (const std::string* s = v.string()) return one_line(*s);
  return one_line(gguf::format_value(v, 8), 96);
}

ordered_json to_json(const Value& v) {
  return std::visit(
      [](const auto& x) -> ordered_json {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, gguf::Array>) {
          ordered_json a = ordered_json::array();
          for (const Value& item : x.items) a.push_back(to_json(item));
          return a;
        } else if constexpr (std::is_same_v<X, float>) {
          // The shortest text of the float, read back as a double: 1e-05, not 9.99999e-06.
          return std::strtod(fmt::format("{}", x).c_str(), nullptr);
        } else if constexpr (std::is_same_v<X, uint8_t> || std::is_same_v<X, int8_t>) {
          return static_cast<int>(x);
        } else {
          return x;
        }
      },
      v.storage());
}

std::string shape_text(const TensorInfo& t, const char* sep) {
  std::string s;
  for (int d = 0; d < t.n_dims; ++d) s += fmt::format("{}{}", d > 0 ? sep : "", t.ne[d]);
  return s;
}

// A token id key (tokenizer.ggml.bos_token_id, ...) and its token text, when present.
struct SpecialToken {
  std::string role;  // "bos"
  std::optional<int64_t> id;
  std::optional<std::string> text;  // absent when the id is outside the vocabulary
};

struct Summary {
  std::string arch;
  std::vector<std::pair<std::string, const Value*>> hparams;  // key without the arch prefix
  std::vector<std::pair<std::string, const Value*>> general;  // key without "general."
  std::optional<uint64_t> vocab_size;
  bool vocab_from_hparams = false;  // <arch>.vocab_size, not the token list length
  std::optional<size_t> chat_template_bytes;
  // Tokenizer.
  const gguf::Array* tokens = nullptr;
  std::optional<size_t> n_merges;
  std::vector<SpecialToken> special;
  std::vector<std::pair<std::string, const Value*>> tokenizer_scalars;  // model, pre, flags
  // Totals by type, largest first.
  struct Total {
    std::string type;
    size_t count = 0;
    uint64_t bytes = 0;
  };
  std::vector<Total> totals;
};

Summary summarize(const GgufFile& f) {
  const Metadata& m = f.metadata();
  Summary s;
  if (const Value* a = m.value("general.architecture"); a != nullptr && a->string()) {
    s.arch = *a->string();
  }
  const std::string prefix = s.arch.empty() ? std::string() : s.arch + ".";
  for (const std::string& k : m.keys()) {
    if (!prefix.empty() && starts_with(k, prefix)) {
      s.hparams.emplace_back(k.substr(prefix.size()), m.value(k));
    } else if (starts_with(k, "general.") && k != "general.architecture") {
      s.general.emplace_back(k.substr(8), m.value(k));
    }
  }
  if (const Value* t = m.value("tokenizer.ggml.tokens")) {
    if (const gguf::Array* a = t->array(); a != nullptr && a->elem_type == ValueType::STRING) {
      s.tokens = a;
    }
  }
  if (!prefix.empty()) {
    if (const Value* v = m.value(prefix + "vocab_size")) {
      if (auto n = v->to_integer<uint64_t>()) {
        s.vocab_size = *n;
        s.vocab_from_hparams = true;
      }
    }
  }
  if (!s.vocab_size && s.tokens != nullptr) s.vocab_size = s.tokens->items.size();
  if (const Value* v = m.value("tokenizer.ggml.merges"); v != nullptr && v->array()) {
    s.n_merges = v->array()->items.size();
  }
  if (const Value* v = m.value("tokenizer.chat_template"); v != nullptr && v->string()) {
    s.chat_template_bytes = v->string()->size();
  }
  for (const char* k : {"model", "pre", "add_bos_token", "add_eos_token", "add_space_prefix"}) {
    const std::string key = fmt::format("tokenizer.ggml.{}", k);
    if (const Value* v = m.value(key)) s.tokenizer_scalars.emplace_back(k, v);
  }
  const std::pair<const char*, const char*> roles[] = {
      {"bos", "bos_token_id"},     {"eos", "eos_token_id"},     {"eot", "eot_token_id"},
      {"unk", "unknown_token_id"}, {"pad", "padding_token_id"}, {"sep", "seperator_token_id"},
      {"cls", "cls_token_id"},     {"mask", "mask_token_id"}};
  for (const auto& [role, key] : roles) {
    const Value* v = m.value(std::string("tokenizer.ggml.") + key);
    if (v == nullptr) continue;
    SpecialToken st;
    st.role = role;
    st.id = v->to_integer<int64_t>();
    if (st.id && s.tokens != nullptr && *st.id >= 0 &&
        static_cast<uint64_t>(*st.id) < s.tokens->items.size()) {
      st.text = *s.tokens->items[static_cast<size_t>(*st.id)].string();
    }
    s.special.push_back(std::move(st));
  }
  std::map<std::string, Summary::Total> totals;
  for (const TensorInfo& t : f.tensors()) {
    auto& tot = totals[std::string(dtype_name(t.type))];
    tot.type = std::string(dtype_name(t.type));
    tot.count++;
    tot.bytes += t.n_bytes;
  }
  for (auto& [k, v] : totals) s.totals.push_back(v);
  std::stable_sort(
      s.totals.begin(), s.totals.end(),
      [](const Summary::Total& a, const Summary::Total& b) { return a.bytes > b.bytes; });
  return s;
}

double percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(whole);
}

int print_json(const GgufFile& f, const Summary& s) {
  ordered_json j;
  j["file"] = f.path();
  j["file_size"] = f.file_size();
  j["version"] = f.version();
  j["alignment"] = f.alignment();
  j["data_offset"] = f.data_offset();
  j["architecture"] = s.arch;
  for (const auto& [k, v] : s.hparams) j[k] = to_json(*v);
  if (s.vocab_size) {
    j["vocab_size"] = *s.vocab_size;
  } else {
    j["vocab_size"] = nullptr;
  }
  ordered_json general = ordered_json::object();
  for (const auto& [k, v] : s.general) general[k] = to_json(*v);
  j["general"] = general;
  ordered_json tok = ordered_json::object();
  for (const auto& [k, v] : s.tokenizer_scalars) tok[k] = to_json(*v);
  if (s.tokens != nullptr) tok["tokens"] = s.tokens->items.size();
  if (s.n_merges) tok["merges"] = *s.n_merges;
  tok["has_chat_template"] = s.chat_template_bytes.has_value();
  for (const SpecialToken& st : s.special) {
    tok[st.role + "_token_id"] = st.id ? ordered_json(*st.id) : ordered_json(nullptr);
    tok[st.role + "_token"] = st.text ? ordered_json(*st.text) : ordered_json(nullptr);
  }
  j["tokenizer"] = tok;
  ordered_json tensors = ordered_json::array();
  for (const TensorInfo& t : f.tensors()) {
    ordered_json shape = ordered_json::array();
    for (int d = 0; d < t.n_dims; ++d) shape.push_back(t.ne[d]);
    tensors.push_back({{"name", t.name},
                       {"type", std::string(dtype_name(t.type))},
                       {"shape", shape},
                       {"bytes", t.n_bytes},
                       {"offset", f.data_offset() + t.offset}});
  }
  j["tensor_count"] = f.tensors().size();
  j["tensors"] = tensors;
  ordered_json totals = ordered_json::object();
  for (const auto& t : s.totals) {
    totals[t.type] = {{"count", t.count},
                      {"bytes", t.bytes},
                      {"percent_of_file", percent(t.bytes, f.file_size())}};
  }
  j["totals_by_type"] = totals;
  // Token texts may hold bytes that are not UTF-8: replace them rather than fail.
  fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  return 0;
}

void print_pairs(const std::vector<std::pair<std::string, const Value*>>& kv, size_t w = 0) {
  for (const auto& [k, v] : kv) w = std::max(w, k.size());
  for (const auto& [k, v] : kv) fmt::print("  {:<{}}  {}\n", k, w, show(*v));
}

int print_human(const GgufFile& f, const Summary& s) {
  fmt::print("file          {} ({} bytes, {})\n", f.path(), f.file_size(),
             human_bytes(f.file_size()));
  fmt::print(
      "gguf          version {}, alignment {}, {} metadata keys, {} tensors, data at byte {}\n",
      f.version(), f.alignment(), f.metadata().size(), f.tensors().size(), f.data_offset());
  fmt::print("architecture  {}\n", s.arch.empty() ? "(none)" : s.arch);

  fmt::print("\nhyperparameters ({}.*)\n", s.arch.empty() ? "?" : s.arch);
  if (s.hparams.empty()) fmt::print("  (none)\n");
  print_pairs(s.hparams);
  if (s.vocab_size && !s.vocab_from_hparams) {
    fmt::print("  (vocab size from the token list: {})\n", *s.vocab_size);
  }

  fmt::print("\ngeneral\n");
  if (s.general.empty()) fmt::print("  (none)\n");
  print_pairs(s.general);

  fmt::print("\ntokenizer\n");
  print_pairs(s.tokenizer_scalars, 16);
  if (s.tokens != nullptr) fmt::print("  tokens            {}\n", s.tokens->items.size());
  if (s.n_merges) fmt::print("  merges            {}\n", *s.n_merges);
  if (s.chat_template_bytes) {
    fmt::print("  chat_template     ({} bytes)\n", *s.chat_template_bytes);
  }
  for (const SpecialToken& st : s.special) {
    const std::string id = st.id ? std::to_string(*st.id) : std::string("(not an integer)");
    const std::string text = st.text ? fmt::format("'{}'", one_line(*st.text, 40))
                                     : std::string("(outside the vocabulary)");
    fmt::print("  {:<16}  {} {}\n", st.role + " id", id, text);
  }
  if (s.tokens == nullptr && s.tokenizer_scalars.empty()) fmt::print("  (none)\n");

  fmt::print("\ntensors\n");
  size_t wn = 4, ws = 5;
  for (const TensorInfo& t : f.tensors()) {
    wn = std::max(wn, t.name.size());
    ws = std::max(ws, shape_text(t, " x ").size());
  }
  fmt::print("  {:<{}}  {:<5}  {:<{}}  {:>12}  {:>12}\n", "name", wn, "type", "shape", ws, "bytes",
             "offset");
  for (const TensorInfo& t : f.tensors()) {
    fmt::print("  {:<{}}  {:<5}  {:<{}}  {:>12}  {:>12}\n", t.name, wn, dtype_name(t.type),
               shape_text(t, " x "), ws, t.n_bytes, f.data_offset() + t.offset);
  }

  fmt::print("\ntotals by type\n");
  fmt::print("  {:<5}  {:>6}  {:>12}  {:>10}  {:>9}\n", "type", "count", "bytes", "", "% of file");
  uint64_t all = 0;
  size_t n = 0;
  for (const auto& t : s.totals) {
    fmt::print("  {:<5}  {:>6}  {:>12}  {:>10}  {:>8.2f}%\n", t.type, t.count, t.bytes,
               human_bytes(t.bytes), percent(t.bytes, f.file_size()));
    all += t.bytes;
    n += t.count;
  }
  fmt::print("  {:<5}  {:>6}  {:>12}  {:>10}  {:>8.2f}%\n", "all", n, all, human_bytes(all),
             percent(all, f.file_size()));
  return 0;
}

int run_inspect(const InspectOptions& o) {
  if (!o.model_pos.empty() && !o.model_opt.empty() && o.model_pos != o.model_opt) {
    throw InvalidArgument(
        fmt::format("inspect: two models given ('{}' and --model '{}')", o.model_pos, o.model_opt));
  }
  std::string path = !o.model_pos.empty() ? o.model_pos : o.model_opt;
  if (path.empty()) path = kDefaultModel;
  auto f = GgufFile::open(path);
  const Summary s = summarize(*f);
  return o.json ? print_json(*f, s) : print_human(*f, s);
}

const Registrar kInspect("inspect", [](CLI::App& app) -> std::function<int()> {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App* sub = app.add_subcommand(
      "inspect", "Show a GGUF model's hyperparameters, tokenizer, tensors and sizes");
  sub->add_option("model", opts->model_pos, fmt::format("GGUF file (default {})", kDefaultModel));
  sub->add_option("-m,--model", opts->model_opt, "GGUF file (same as the positional MODEL)");
  sub->add_flag("--json", opts->json, "Print JSON instead of tables");
  return [opts] { return run_inspect(*opts); };
});

}  // namespace
}  // namespace spillway::cli
