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
  const detail::RopeKeys rope = detail::read_rope_keys(file, common);
  c.n_rot = rope.n_rot;
  c.rope_freq_scale = rope.freq_scale;
  c.rope_freq_base = meta.find<double>(p + "rope.freq_base").value_or(c.rope_freq_base);
  c.rope_freq_base_local =
      meta.find<double>(p + "rope.freq_base_swa").value_or(c.rope_freq_base_local);
  if (!(c.rope_freq_base > 0) || !(c.rope_freq_base_local > 0))
    throw bad(fmt::format("rope.freq_base {} and rope.freq_base_swa {} must be > 0",
                          c.rope_freq_base, c.rope_freq_base_local));

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

namespace {

using detail::dims::embd;
using detail::dims::ff;
using detail::dims::head;
using detail::dims::kv;
using detail::dims::q;

// A block's tensors: what binding, interleaving, byte counts and lookups by name read.
constexpr detail::LayerTensor<Gemma3Layer> kLayerTensors[] = {
    detail::vector_tensor("attn_norm.weight", embd, &Gemma3Layer::attn_norm),
    detail::matrix_tensor("attn_q.weight", embd, q, &Gemma3Layer::wq),
    detail::matrix_tensor("attn_k.weight", embd, kv, &Gemma3Layer::wk),
    detail::matrix_tensor("attn_v.weight", embd, kv, &Gemma3Layer::wv),
    detail::vector_tensor("attn_q_norm.weight", head, &Gemma3Layer::q_norm),
    detail::vector_tensor("attn_k_norm.weight", head, &Gemma3Layer::k_norm),
    detail::matrix_tensor("attn_output.weight", q, embd, &Gemma3Layer::wo),
    detail::vector_tensor("post_attention_norm.weight", embd, &Gemma3Layer::post_attn_norm),
    detail::vector_tensor("ffn_norm.weight", embd, &Gemma3Layer::ffn_norm),
    detail::matrix_tensor("ffn_gate.weight", embd, ff, &Gemma3Layer::w_gate),
    detail::matrix_tensor("ffn_up.weight", embd, ff, &Gemma3Layer::w_up),
    detail::matrix_tensor("ffn_down.weight", ff, embd, &Gemma3Layer::w_down),
    detail::vector_tensor("post_ffw_norm.weight", embd, &Gemma3Layer::post_ffn_norm),
};

}  // namespace

Gemma3Model::Gemma3Model(std::unique_ptr<gguf::GgufFile> file)
    : BlockModel(std::move(file), kLayerTensors) {
  const gguf::GgufFile& f = *file_;
  config_ = detail::read_common_config(f);
  gemma_ = Gemma3Config::from_gguf(f, config_);
  load_tokenizer();
  bind_tensors();
  rope_global_ = detail::make_rope(ops::RopeStyle::kHalves, gemma_.n_rot, gemma_.rope_freq_base,
                                   gemma_.rope_freq_scale);
  rope_local_ =
      detail::make_rope(ops::RopeStyle::kHalves, gemma_.n_rot, gemma_.rope_freq_base_local, 1.0);
}

std::unique_ptr<Model> bind(std::unique_ptr<gguf::GgufFile> file) {
  return std::make_unique<Gemma3Model>(std::move(file));
}

}  // namespace spillway::model::gemma3
