// Gemma 3: configuration from metadata and weight binding.
#include <fmt/core.h>

#include <cmath>

#include "gemma3.h"
#include "spillway/core/error.h"

namespace spillway::model::gemma3 {

namespace {
// Gemma 3 makes every 6th layer global when the file does not say otherwise.
constexpr int64_t kDefaultPattern = 6;
}  // namespace

Gemma3Config Gemma3Config::from_gguf(const gguf::GgufFile& file, ModelConfig& common) {
  const auto& meta = file.metadata();
  const std::string p = common.architecture + ".";
  auto bad = [&](const std::string& what) {
    return FormatError(fmt::format("{}: inconsistent hyperparameters: {}", file.path(), what));
  };
  Gemma3Config c;
  c.n_rot = meta.find<uint32_t>(p + "rope.dimension_count").value_or(common.head_dim);
  if (c.n_rot < 2 || c.n_rot > common.head_dim || c.n_rot % 2 != 0)
    throw bad(fmt::format("rope.dimension_count {} must be even and in [2, head_dim {}]", c.n_rot,
                          common.head_dim));
  c.rope_freq_base = meta.find<double>(p + "rope.freq_base").value_or(c.rope_freq_base);
  c.rope_freq_base_local =
      meta.find<double>(p + "rope.freq_base_swa").value_or(c.rope_freq_base_local);
  if (!(c.rope_freq_base > 0) || !(c.rope_freq_base_local > 0))
    throw bad(fmt::format("rope.freq_base {} and rope.freq_base_swa {} must be > 0",
                          c.rope_freq_base, c.rope_freq_base_local));
  const std::string scaling = meta.find<std::string>(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    const double factor = meta.get<double>(p + "rope.scaling.factor");
    if (!(factor > 0)) throw bad(fmt::format("rope.scaling.factor {} <= 0", factor));
    c.rope_freq_scale = 1.0 / factor;
  } else if (scaling != "none") {
    throw UnsupportedError(fmt::format(
        "{}: RoPE scaling type '{}' ({}rope.scaling.type) is not supported (supported: none, "
        "linear)",
        file.path(), scaling, p));
  }

  c.sliding_window = meta.find<uint32_t>(p + "attention.sliding_window").value_or(0);
  if (c.sliding_window > 0) {
    const std::string key = p + "attention.sliding_window_pattern";
    const gguf::Value* v = meta.value(key);
    std::vector<bool> local(static_cast<size_t>(common.n_layer));
    if (v && v->array()) {
      const std::vector<int64_t> flags = meta.get_ints(key);
      if (static_cast<int64_t>(flags.size()) != common.n_layer)
        throw bad(
            fmt::format("{} has {} entries for {} layers", key, flags.size(), common.n_layer));
      for (size_t i = 0; i < flags.size(); ++i) local[i] = flags[i] != 0;
    } else {
      const int64_t period = meta.find<uint32_t>(key).value_or(kDefaultPattern);
      for (int64_t i = 0; i < common.n_layer; ++i)
        local[static_cast<size_t>(i)] = period == 0 || i % period < period - 1;
    }
    for (size_t i = 0; i < local.size(); ++i)
      common.layers[i].window = local[i] ? c.sliding_window : 0;
  }

  // The query scale is 1/sqrt(query_pre_attn_scalar): the head dimension, except for the
  // 27B model (62 layers), trained with n_embd / n_head.
  const double qpas = common.n_layer == 62 ? static_cast<double>(common.n_embd / common.n_head)
                                           : static_cast<double>(common.head_dim);
  c.attn_scale = static_cast<float>(1.0 / std::sqrt(qpas));
  c.embd_scale = std::sqrt(static_cast<float>(common.n_embd));
  c.final_logit_softcap =
      static_cast<float>(meta.find<double>(p + "final_logit_softcapping").value_or(0.0));
  if (c.final_logit_softcap < 0)
    throw bad(fmt::format("final_logit_softcapping {} < 0", c.final_logit_softcap));
  return c;
}

Gemma3Model::Gemma3Model(std::unique_ptr<gguf::GgufFile> file) : Model(std::move(file)) {
  const gguf::GgufFile& f = *file_;
  config_ = detail::read_common_config(f);
  gemma_ = Gemma3Config::from_gguf(f, config_);
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
    Gemma3Layer& L = layers_[static_cast<size_t>(i)];
    L.attn_norm = bind_vector(f, b + "attn_norm.weight", d);
    L.wq = bind_matrix(f, b + "attn_q.weight", d, c.n_head * hd);
    L.wk = bind_matrix(f, b + "attn_k.weight", d, c.n_head_kv * hd);
    L.wv = bind_matrix(f, b + "attn_v.weight", d, c.n_head_kv * hd);
    L.q_norm = bind_vector(f, b + "attn_q_norm.weight", hd);
    L.k_norm = bind_vector(f, b + "attn_k_norm.weight", hd);
    L.wo = bind_matrix(f, b + "attn_output.weight", c.n_head * hd, d);
    L.post_attn_norm = bind_vector(f, b + "post_attention_norm.weight", d);
    L.ffn_norm = bind_vector(f, b + "ffn_norm.weight", d);
    L.w_gate = bind_matrix(f, b + "ffn_gate.weight", d, c.n_ff);
    L.w_up = bind_matrix(f, b + "ffn_up.weight", d, c.n_ff);
    L.w_down = bind_matrix(f, b + "ffn_down.weight", c.n_ff, d);
    L.post_ffn_norm = bind_vector(f, b + "post_ffw_norm.weight", d);
  }
  std::vector<ops::WeightMatrix*> matrices = {&token_embd_, &output_};
  for (Gemma3Layer& L : layers_)
    for (ops::WeightMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      matrices.push_back(w);
  interleaved_.interleave(f, matrices);
  rope_global_ = detail::make_rope(ops::RopeStyle::kHalves, gemma_.n_rot, gemma_.rope_freq_base,
                                   gemma_.rope_freq_scale);
  rope_local_ =
      detail::make_rope(ops::RopeStyle::kHalves, gemma_.n_rot, gemma_.rope_freq_base_local, 1.0);
}

uint64_t Gemma3Model::weight_bytes_per_token() const {
  const uint64_t d = static_cast<uint64_t>(config_.n_embd);
  const uint64_t hd = static_cast<uint64_t>(config_.head_dim);
  uint64_t total = detail::matrix_bytes(output_) + token_embd_.row_bytes + 4 * d;
  for (const Gemma3Layer& L : layers_) {
    for (const ops::WeightMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      total += detail::matrix_bytes(*w);
    total += 4 * 4 * d + 2 * 4 * hd;
  }
  return total;
}

std::unique_ptr<Model> bind(std::unique_ptr<gguf::GgufFile> file) {
  return std::make_unique<Gemma3Model>(std::move(file));
}

}  // namespace spillway::model::gemma3
