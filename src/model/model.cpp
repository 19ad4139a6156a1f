#include "spillway/model/model.h"

#include <fmt/core.h>

#include "spillway/core/error.h"

namespace spillway::model {

int64_t ModelConfig::n_local_layers() const {
  int64_t n = 0;
  for (const auto& l : layers) n += l.window > 0;
  return n;
}

Model::~Model() = default;

std::unique_ptr<Model> Model::load(const std::string& path) {
  auto file = gguf::GgufFile::open(path);
  const std::string arch = file->metadata().get<std::string>("general.architecture");
  std::string names;
  for (const Architecture& a : architectures()) {
    if (a.name == arch) return a.bind(std::move(file));
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
