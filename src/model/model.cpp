#include "spillway/model/model.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <string_view>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/core/log_spdlog.h"

namespace spillway::model {

int64_t ModelConfig::n_local_layers() const {
  int64_t n = 0;
  for (const auto& l : layers) n += l.window > 0;
  return n;
}

Model::~Model() = default;

namespace {

// "Q4_1 x 211 (90.1 MiB), F32 x 61 (0.4 MiB)": tensor types by bytes, largest first.
std::string tensor_mix(const gguf::GgufFile& f) {
  std::map<DType, std::pair<int64_t, uint64_t>> by_type;  // count, bytes
  for (const auto& t : f.tensors()) {
    auto& e = by_type[t.type];
    ++e.first;
    e.second += t.n_bytes;
  }
  std::vector<std::pair<DType, std::pair<int64_t, uint64_t>>> v(by_type.begin(), by_type.end());
  std::sort(v.begin(), v.end(),
            [](const auto& a, const auto& b) { return a.second.second > b.second.second; });
  std::string out;
  for (const auto& [type, e] : v)
    out += fmt::format("{}{} x {} ({:.1f} MiB)", out.empty() ? "" : ", ", dtype_name(type), e.first,
                       static_cast<double>(e.second) / (1024.0 * 1024.0));
  return out;
}

void log_loaded(const Model& m, double seconds) {
  auto lg = logger();
  if (!lg->should_log(spdlog::level::info)) return;
  const ModelConfig& c = m.config();
  lg->info(
      "loaded {}: {} '{}', {} layers ({} local), embd {}, heads {}/{} kv, head dim {}, vocab {}, "
      "trained context {}, {:.1f} MiB, tensors: {}; {:.0f} ms",
      m.file().path(), c.architecture, c.name, c.n_layer, c.n_local_layers(), c.n_embd, c.n_head,
      c.n_head_kv, c.head_dim, c.n_vocab, c.n_ctx_train,
      static_cast<double>(m.file().file_size()) / (1024.0 * 1024.0), tensor_mix(m.file()),
      seconds * 1e3);
}

// FNV-1a, 64 bits: enough to tell models apart, not a defence against forgery.
class Fnv64 {
 public:
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ p[i]) * 0x100000001b3ULL;
  }
  void add(std::string_view s) {
    add_int(static_cast<int64_t>(s.size()));
    add(s.data(), s.size());
  }
  void add_int(int64_t v) { add(&v, sizeof v); }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

// ModelConfig::fingerprint. The 1-D tensors are a few hundred kilobytes at most (norm
// weights), so hashing their bytes costs little at load and tells fine-tunes of one base
// model apart, which the tensor table alone would not.
uint64_t model_fingerprint(const gguf::GgufFile& f, const ModelConfig& c) {
  Fnv64 h;
  h.add(c.architecture);
  for (int64_t x : {c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab})
    h.add_int(x);
  for (const gguf::TensorInfo& t : f.tensors()) {
    h.add(t.name);
    h.add_int(static_cast<int64_t>(t.type));
    for (int64_t n : t.ne) h.add_int(n);
    if (t.n_dims == 1) h.add(t.data, static_cast<size_t>(t.n_bytes));
  }
  return h.value();
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path) {
  const auto t0 = std::chrono::steady_clock::now();
  auto file = gguf::GgufFile::open(path);
  const std::string arch = file->metadata().get<std::string>("general.architecture");
  std::string names;
  for (const Architecture& a : architectures()) {
    if (a.name == arch) {
      auto model = a.bind(std::move(file));
      model->config_.fingerprint = model_fingerprint(*model->file_, model->config_);
      log_loaded(*model,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      return model;
    }
    names += (names.empty() ? "" : ", ") + a.name;
  }
  throw UnsupportedError(
      fmt::format("{}: architecture '{}' is not supported (supported: {})", path, arch, names));
}

void Model::load_tokenizer() {
  tokenizer_ = Tokenizer::from_gguf(*file_);
  if (tokenizer_->vocab_size() != config_.n_vocab)
    throw FormatError(fmt::format("{}: vocabulary has {} tokens but the model expects {}",
                                  file_->path(), tokenizer_->vocab_size(), config_.n_vocab));
}

std::optional<std::string> Model::chat_template() const {
  return file_->metadata().find<std::string>("tokenizer.chat_template");
}

}  // namespace spillway::model
