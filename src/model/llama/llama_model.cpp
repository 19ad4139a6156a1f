// Llama: configuration from metadata and weight binding.
#include <fmt/core.h>

#include "llama.h"
#include "spillway/core/error.h"

namespace spillway::model::llama {

LlamaConfig LlamaConfig::from_gguf(const gguf::GgufFile& file, const ModelConfig& common) {
  const auto& meta = file.metadata();
  const std::string p = common.architecture + ".";
  LlamaConfig c;
  auto bad = [&](const std::string& what) {
    return FormatError(fmt::format("{}: inconsistent hyperparameters: {}", file.path(), what));
  };
  const detail::RopeKeys rope = detail::read_rope_keys(file, common);
  c.n_rot = rope.n_rot;
  c.rope_freq_scale = rope.freq_scale;
  c.rope_freq_base = meta.find<double>(p + "rope.freq_base").value_or(10000.0);
  if (!(c.rope_freq_base > 0)) throw bad(fmt::format("rope.freq_base {} <= 0", c.rope_freq_base));
  return c;
}

namespace {

using detail::dims::embd;
using detail::dims::ff;
using detail::dims::kv;
using detail::dims::q;

// A block's tensors: what binding, interleaving, byte counts and lookups by name read.
constexpr detail::LayerTensor<LlamaLayer> kLayerTensors[] = {
    detail::vector_tensor("attn_norm.weight", embd, &LlamaLayer::attn_norm),
    detail::matrix_tensor("attn_q.weight", embd, q, &LlamaLayer::wq),
    detail::matrix_tensor("attn_k.weight", embd, kv, &LlamaLayer::wk),
    detail::matrix_tensor("attn_v.weight", embd, kv, &LlamaLayer::wv),
    detail::matrix_tensor("attn_output.weight", q, embd, &LlamaLayer::wo),
    detail::vector_tensor("ffn_norm.weight", embd, &LlamaLayer::ffn_norm),
    detail::matrix_tensor("ffn_gate.weight", embd, ff, &LlamaLayer::w_gate),
    detail::matrix_tensor("ffn_up.weight", embd, ff, &LlamaLayer::w_up),
    detail::matrix_tensor("ffn_down.weight", ff, embd, &LlamaLayer::w_down),
};

}  // namespace

LlamaModel::LlamaModel(std::unique_ptr<gguf::GgufFile> file)
    : BlockModel(std::move(file), kLayerTensors) {
  const gguf::GgufFile& f = *file_;
  config_ = detail::read_common_config(f);
  llama_ = LlamaConfig::from_gguf(f, config_);
  load_tokenizer();
  bind_tensors();
  if (f.find_tensor("rope_freqs.weight"))
    rope_factors_ = detail::bind_vector(f, "rope_freqs.weight", llama_.n_rot / 2);
  rope_ = detail::make_rope(ops::RopeStyle::kAdjacent, llama_.n_rot, llama_.rope_freq_base,
                            llama_.rope_freq_scale, rope_factors_);
}

const float* LlamaModel::find_vector(std::string_view name) const {
  if (name == "rope_freqs.weight") return rope_factors_;
  return BlockModel::find_vector(name);
}

std::unique_ptr<Model> bind(std::unique_ptr<gguf::GgufFile> file) {
  return std::make_unique<LlamaModel>(std::move(file));
}

}  // namespace spillway::model::llama
