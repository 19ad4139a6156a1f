#include <fmt/core.h>

#include <cmath>

#include "spillway/core/error.h"
#include "spillway/model/llama.h"

namespace spillway::model {

namespace {

std::string shape_str(const gguf::TensorInfo& t) {
  std::string s = "[";
  for (int i = 0; i < t.n_dims; ++i) s += fmt::format("{}{}", i ? ", " : "", t.ne[i]);
  return s + "]";
}

// A 2-D weight [cols, rows] (GGUF order) bound in place.
ops::WeightMatrix bind_matrix(const gguf::GgufFile& f, const std::string& name, int64_t cols,
                              int64_t rows) {
  const gguf::TensorInfo& t = f.tensor(name);
  if (t.n_dims != 2 || t.ne[0] != cols || t.ne[1] != rows)
    throw FormatError(fmt::format("{}: tensor '{}' has shape {}, expected [{}, {}]", f.path(), name,
                                  shape_str(t), cols, rows));
  ops::WeightMatrix w;
  w.type = t.type;
  w.data = t.data;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = t.row_bytes();
  return w;
}

const float* bind_vector(const gguf::GgufFile& f, const std::string& name, int64_t n) {
  const gguf::TensorInfo& t = f.tensor(name);
  if (t.n_elements() != n || t.ne[0] != n)
    throw FormatError(fmt::format("{}: tensor '{}' has shape {}, expected [{}]", f.path(), name,
                                  shape_str(t), n));
  if (t.type != DType::F32)
    throw UnsupportedError(fmt::format("{}: tensor '{}' is {}; norm weights must be F32", f.path(),
                                       name, dtype_name(t.type)));
  return reinterpret_cast<const float*>(t.data);
}

}  // namespace

std::unique_ptr<LlamaModel> LlamaModel::load(const std::string& path) {
  return std::make_unique<LlamaModel>(gguf::GgufFile::open(path));
}

LlamaModel::LlamaModel(std::unique_ptr<gguf::GgufFile> file) : file_(std::move(file)) {
  const gguf::GgufFile& f = *file_;
  config_ = LlamaConfig::from_gguf(f);
  const LlamaConfig& c = config_;
  tokenizer_ = Tokenizer::from_gguf(f);
  if (tokenizer_->vocab_size() != c.n_vocab)
    throw FormatError(fmt::format("{}: vocabulary has {} tokens but the model expects {}", f.path(),
                                  tokenizer_->vocab_size(), c.n_vocab));

  const int64_t d = c.n_embd, hd = c.head_dim;
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

  inv_freq_.resize(static_cast<size_t>(c.n_rot / 2));
  const float* rope_factors = nullptr;
  if (f.find_tensor("rope_freqs.weight"))
    rope_factors = bind_vector(f, "rope_freqs.weight", c.n_rot / 2);
  for (int64_t i = 0; i < c.n_rot / 2; ++i) {
    double v = c.rope_freq_scale * std::pow(c.rope_freq_base, -2.0 * static_cast<double>(i) /
                                                                  static_cast<double>(c.n_rot));
    if (rope_factors) v /= rope_factors[i];
    inv_freq_[static_cast<size_t>(i)] = v;
  }
}

uint64_t LlamaModel::weight_bytes_per_token() const {
  const LlamaConfig& c = config_;
  uint64_t total = output_.row_bytes * static_cast<uint64_t>(output_.rows);
  total += token_embd_.row_bytes;  // one embedding row
  for (const LlamaLayer& L : layers_) {
    for (const ops::WeightMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      total += w->row_bytes * static_cast<uint64_t>(w->rows);
    total += 2 * 4 * static_cast<uint64_t>(c.n_embd);
  }
  return total + 4 * static_cast<uint64_t>(c.n_embd);
}

}  // namespace spillway::model
