#include <fmt/core.h>

#include "spillway/core/error.h"
#include "spillway/model/llama.h"

namespace spillway::model {

LlamaConfig LlamaConfig::from_gguf(const gguf::GgufFile& file) {
  const auto& meta = file.metadata();
  LlamaConfig c;
  c.architecture = meta.get<std::string>("general.architecture");
  if (c.architecture != "llama")
    throw UnsupportedError(fmt::format("{}: architecture '{}' is not supported (supported: llama)",
                                       file.path(), c.architecture));
  const std::string p = c.architecture + ".";
  c.name = meta.find<std::string>("general.name").value_or("");
  c.n_layer = meta.get<uint32_t>(p + "block_count");
  c.n_embd = meta.get<uint32_t>(p + "embedding_length");
  c.n_head = meta.get<uint32_t>(p + "attention.head_count");
  c.n_head_kv = meta.find<uint32_t>(p + "attention.head_count_kv").value_or(c.n_head);
  c.n_ff = meta.get<uint32_t>(p + "feed_forward_length");
  c.n_ctx_train = meta.get<uint32_t>(p + "context_length");
  c.rope_freq_base = meta.find<double>(p + "rope.freq_base").value_or(10000.0);
  c.rms_eps = static_cast<float>(meta.get<double>(p + "attention.layer_norm_rms_epsilon"));

  auto bad = [&](const std::string& what) {
    return FormatError(fmt::format("{}: inconsistent hyperparameters: {}", file.path(), what));
  };
  if (c.n_layer < 1 || c.n_embd < 1 || c.n_head < 1 || c.n_head_kv < 1 || c.n_ff < 1)
    throw bad(
        fmt::format("block_count {}, embedding_length {}, head_count {}, head_count_kv {}, "
                    "feed_forward_length {} must all be >= 1",
                    c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff));
  if (c.n_embd % c.n_head != 0)
    throw bad(
        fmt::format("embedding_length {} is not a multiple of head_count {}", c.n_embd, c.n_head));
  if (c.n_head % c.n_head_kv != 0)
    throw bad(
        fmt::format("head_count {} is not a multiple of head_count_kv {}", c.n_head, c.n_head_kv));
  c.head_dim = c.n_embd / c.n_head;
  for (const char* key : {"attention.key_length", "attention.value_length"}) {
    if (auto len = meta.find<uint32_t>(p + key); len && *len != c.head_dim)
      throw UnsupportedError(
          fmt::format("{}: {}{} = {} differs from embedding_length/head_count "
                      "= {}; not supported",
                      file.path(), p, key, *len, c.head_dim));
  }
  c.n_rot = meta.find<uint32_t>(p + "rope.dimension_count").value_or(c.head_dim);
  if (c.n_rot < 2 || c.n_rot > c.head_dim || c.n_rot % 2 != 0)
    throw bad(fmt::format("rope.dimension_count {} must be even and in [2, head_dim {}]", c.n_rot,
                          c.head_dim));
  if (c.rope_freq_base <= 0) throw bad(fmt::format("rope.freq_base {} <= 0", c.rope_freq_base));
  if (!(c.rms_eps > 0)) throw bad(fmt::format("layer_norm_rms_epsilon {} <= 0", c.rms_eps));

  const std::string scaling = meta.find<std::string>(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    const double factor = meta.get<double>(p + "rope.scaling.factor");
    if (!(factor > 0)) throw bad(fmt::format("rope.scaling.factor {} <= 0", factor));
    c.rope_freq_scale = 1.0 / factor;
  } else if (scaling != "none") {
    throw UnsupportedError(
        fmt::format("{}: RoPE scaling type '{}' ({}rope.scaling.type) is not "
                    "supported (supported: none, linear)",
                    file.path(), scaling, p));
  }
  if (auto v = meta.find<uint32_t>(p + "vocab_size")) {
    c.n_vocab = *v;
  } else if (meta.contains("tokenizer.ggml.tokens")) {
    const gguf::Value* tokens = meta.value("tokenizer.ggml.tokens");
    c.n_vocab = tokens->array() ? static_cast<int64_t>(tokens->array()->items.size()) : 0;
  }
  if (c.n_vocab < 1) throw bad("vocabulary size unknown (no vocab_size, no tokenizer tokens)");
  c.tied_output = file.find_tensor("output.weight") == nullptr;
  return c;
}

}  // namespace spillway::model
