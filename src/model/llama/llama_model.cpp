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
  c.rope_freq_base = meta.find<double>(p + "rope.freq_base").value_or(10000.0);
  c.n_rot = meta.find<uint32_t>(p + "rope.dimension_count").value_or(common.head_dim);
  if (c.n_rot < 2 || c.n_rot > common.head_dim || c.n_rot % 2 != 0)
    throw bad(fmt::format("rope.dimension_count {} must be even and in [2, head_dim {}]", c.n_rot,
                          common.head_dim));
  if (!(c.rope_freq_base > 0)) throw bad(fmt::format("rope.freq_base {} <= 0", c.rope_freq_base));
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
  return c;
}

LlamaModel::LlamaModel(std::unique_ptr<gguf::GgufFile> file) : Model(std::move(file)) {
  const gguf::GgufFile& f = *file_;
  config_ = detail::read_common_config(f);
  llama_ = LlamaConfig::from_gguf(f, config_);
  load_tokenizer();
  const ModelConfig& c = config_;
  const int64_t d = c.n_embd, hd = c.head_dim;
  using detail::bind_matrix;
  using detail::bind_vector;
  token_embd_ = bind_matrix(f, "token_embd.weight", d, c.n_vocab);
  output_ = c.tied_output ? token_embd_ : bind_matrix(f, "output.weight", d, c.n_vocab);
  output_norm_ = bind_vector(f, "output_norm.weight", d);
  layers_.resize(static_cast<size_t>(c.n_layer));
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string b = fmt::format("blk.{}.", i);
    LlamaLayer& L = layers_[static_cast<size_t>(i)];
    L.attn_norm = bind_vector(f, b + "attn_norm.weight", d);
    L.wq = bind_matrix(f, b + "attn_q.weight", d, c.n_head * hd);
    L.wk = bind_matrix(f, b + "attn_k.weight", d, c.n_head_kv * hd);
    L.wv = bind_matrix(f, b + "attn_v.weight", d, c.n_head_kv * hd);
    L.wo = bind_matrix(f, b + "attn_output.weight", c.n_head * hd, d);
    L.ffn_norm = bind_vector(f, b + "ffn_norm.weight", d);
    L.w_gate = bind_matrix(f, b + "ffn_gate.weight", d, c.n_ff);
    L.w_up = bind_matrix(f, b + "ffn_up.weight", d, c.n_ff);
    L.w_down = bind_matrix(f, b + "ffn_down.weight", c.n_ff, d);
  }
  std::vector<ops::WeightMatrix*> matrices = {&token_embd_, &output_};
  for (LlamaLayer& L : layers_)
    for (ops::WeightMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      matrices.push_back(w);
  interleaved_.interleave(f, matrices);
  const float* factors = f.find_tensor("rope_freqs.weight")
                             ? bind_vector(f, "rope_freqs.weight", llama_.n_rot / 2)
                             : nullptr;
  rope_ = detail::make_rope(ops::RopeStyle::kAdjacent, llama_.n_rot, llama_.rope_freq_base,
                            llama_.rope_freq_scale, factors);
}

uint64_t LlamaModel::weight_bytes_per_token() const {
  uint64_t total = detail::matrix_bytes(output_) + token_embd_.row_bytes;
  for (const LlamaLayer& L : layers_) {
    for (const ops::WeightMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      total += detail::matrix_bytes(*w);
    total += 2 * 4 * static_cast<uint64_t>(config_.n_embd);
  }
  return total + 4 * static_cast<uint64_t>(config_.n_embd);
}

std::unique_ptr<Model> bind(std::unique_ptr<gguf::GgufFile> file) {
  return std::make_unique<LlamaModel>(std::move(file));
}

}  // namespace spillway::model::llama
