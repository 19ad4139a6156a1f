#include "util/naive_reference.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "spillway/core/quant.h"
#include "spillway/ops/matmul.h"

namespace spillway::test {

namespace {

using Eigen::ArrayXd;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using Eigen::VectorXf;

// RMSNorm in double: x / sqrt(mean(x^2) + eps) * w.
VectorXf rms(const VectorXf& x, const float* w, float eps) {
  const VectorXd xd = x.cast<double>();
  const double scale =
      1.0 / std::sqrt(xd.squaredNorm() / static_cast<double>(xd.size()) + static_cast<double>(eps));
  const Eigen::Map<const Eigen::VectorXf> wv(w, x.size());
  return (xd * scale).cwiseProduct(wv.cast<double>()).cast<float>();
}

// The same over each of the `heads` pieces of head_dim (QK-norm).
VectorXf rms_heads(const VectorXf& x, const float* w, int64_t heads, int64_t hd, float eps) {
  VectorXf out(x.size());
  for (int64_t h = 0; h < heads; ++h) out.segment(h * hd, hd) = rms(x.segment(h * hd, hd), w, eps);
  return out;
}

}  // namespace

NaiveReference::Arch NaiveReference::read_arch(const model::Model& m) {
  const model::ModelConfig& c = m.config();
  const gguf::Metadata& meta = m.file().metadata();
  const std::string p = c.architecture + ".";
  Arch a;
  if (c.architecture == "gemma3") {
    a.gemma = true;
  } else if (c.architecture != "llama") {
    throw std::runtime_error("NaiveReference: no equations for architecture " + c.architecture);
  }
  // RoPE: inv_freq[i] = scale * base^(-2i / n_rot) / factor_i.
  const int64_t n_rot = meta.find<uint32_t>(p + "rope.dimension_count").value_or(c.head_dim);
  const std::string scaling = meta.find<std::string>(p + "rope.scaling.type").value_or("none");
  const double scale =
      scaling == "linear" ? 1.0 / meta.get<double>(p + "rope.scaling.factor") : 1.0;
  const float* factors = m.find_vector("rope_freqs.weight");
  auto rope = [&](double base, double s) {
    Rope r{a.gemma, n_rot, std::vector<double>(static_cast<size_t>(n_rot / 2))};
    for (int64_t i = 0; i < n_rot / 2; ++i) {
      r.inv_freq[static_cast<size_t>(i)] =
          s * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(n_rot)) /
          (factors ? factors[i] : 1.0);
    }
    return r;
  };
  if (a.gemma) {
    a.rope_global = rope(meta.find<double>(p + "rope.freq_base").value_or(1e6), scale);
    a.rope_local = rope(meta.find<double>(p + "rope.freq_base_swa").value_or(1e4), 1.0);
    a.embd_scale = std::sqrt(static_cast<float>(c.n_embd));
    // 1 / sqrt(query_pre_attn_scalar): the head size, but n_embd / n_head for the 27B.
    a.attn_scale =
        1.0 / std::sqrt(static_cast<double>(c.n_layer == 62 ? c.n_embd / c.n_head : c.head_dim));
    a.logit_softcap = meta.find<double>(p + "final_logit_softcapping").value_or(0.0);
  } else {
    a.rope_global = a.rope_local =
        rope(meta.find<double>(p + "rope.freq_base").value_or(10000.0), scale);
    a.attn_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  }
  return a;
}

NaiveReference::NaiveReference(const model::Model& m, int64_t sinks, int64_t window, bool absolute,
                               bool local_native)
    : m_(m),
      arch_(read_arch(m)),
      sinks_(sinks),
      window_(window),
      absolute_(absolute),
      local_native_(local_native),
      pool_(1) {
  k_.resize(static_cast<size_t>(m.config().n_layer));
  v_.resize(static_cast<size_t>(m.config().n_layer));
}

const NaiveReference::Rope& NaiveReference::rope_of(int64_t layer) const {
  return m_.config().layers[static_cast<size_t>(layer)].window > 0 ? arch_.rope_local
                                                                   : arch_.rope_global;
}

std::vector<int64_t> NaiveReference::span(int64_t n, int64_t layer) const {
  std::vector<int64_t> s;
  const int64_t local = m_.config().layers[static_cast<size_t>(layer)].window;
  if (local > 0 && local_native_) {
    for (int64_t m = std::max<int64_t>(0, n - local + 1); m <= n; ++m) s.push_back(m);
    return s;
  }
  if (span_fn_) {
    s = span_fn_(n, layer);
    std::sort(s.begin(), s.end());
    return s;
  }
  if (window_ < 0) {
    for (int64_t m = 0; m <= n; ++m) s.push_back(m);
    return s;
  }
  for (int64_t m = 0; m < std::min(sinks_, n + 1); ++m) s.push_back(m);
  for (int64_t m = std::max(sinks_, n - window_ + 1); m <= n; ++m) s.push_back(m);
  return s;
}

// The pairs (a, b) of one head rotated by pos * inv_freq: adjacent pairs (2i, 2i + 1) in
// llama's convention, halves (i, i + n_rot / 2) in NeoX's (gemma); the rest unrotated.
VectorXd NaiveReference::rotate(const float* x, int64_t hd, const Rope& r, int64_t pos) const {
  VectorXd out = Eigen::Map<const VectorXf>(x, hd).cast<double>();
  for (int64_t i = 0; i < r.n_rot / 2; ++i) {
    const double theta = static_cast<double>(pos) * r.inv_freq[static_cast<size_t>(i)];
    const double c = std::cos(theta), s = std::sin(theta);
    const int64_t a = r.halves ? i : 2 * i, b = r.halves ? i + r.n_rot / 2 : 2 * i + 1;
    out[a] = x[a] * c - x[b] * s;
    out[b] = x[a] * s + x[b] * c;
  }
  return out;
}

VectorXf NaiveReference::mm(const std::string& name, const VectorXf& x) {
  const ops::WeightMatrix* w = m_.find_matrix(name);
  if (w == nullptr) throw std::runtime_error("NaiveReference: the model has no matrix " + name);
  VectorXf out(w->rows);
  if (exact_) {
    // Rows dequantized as the model holds them (either layout), products in double.
    const VectorXd xd = x.cast<double>();
    VectorXf row(w->cols);
    for (int64_t r = 0; r < w->rows; ++r) {
      ops::dequantize_weight_row(*w, r, row.data());
      out[r] = static_cast<float>(row.cast<double>().dot(xd));
    }
    return out;
  }
  ops::Activations a;
  a.set(x.data(), 1, w->cols);
  ops::matmul(*w, a, out.data(), w->rows, pool_);
  return out;
}

VectorXf NaiveReference::attend(int64_t l, int64_t n, const VectorXf& q) {
  const auto& c = m_.config();
  const int64_t hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
  const Rope& rope = rope_of(l);
  const std::vector<int64_t> sp = span(n, l);
  const auto ns = static_cast<int64_t>(sp.size());
  const int64_t qpos = absolute_ ? n : ns - 1;
  VectorXf out(nh * hd);
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / (nh / nkv);
    const VectorXd qr = rotate(q.data() + h * hd, hd, rope, qpos);
    // K: the span's keys rotated at their positions; V: their values.
    MatrixXd K(ns, hd), V(ns, hd);
    for (int64_t i = 0; i < ns; ++i) {
      const int64_t pos = absolute_ ? sp[static_cast<size_t>(i)] : i;
      K.row(i) =
          rotate(k_[l].at(sp[static_cast<size_t>(i)]).data() + g * hd, hd, rope, pos).transpose();
      V.row(i) =
          v_[l].at(sp[static_cast<size_t>(i)]).segment(g * hd, hd).cast<double>().transpose();
    }
    ArrayXd sc = (K * qr).array() * arch_.attn_scale;
    // A dropped head leaves out the sinks once the window no longer reaches them.
    if (dropped_.count({l, h}) > 0 && window_ >= 0 && n >= sinks_ + window_) {
      for (int64_t i = 0; i < ns; ++i)
        if (sp[static_cast<size_t>(i)] < sinks_) sc[i] = -INFINITY;
    }
    // The null sink: calibrate on the first tokens, then join the softmax without a value.
    double z = -INFINITY;
    const bool native = local_native_ && c.layers[static_cast<size_t>(l)].window > 0;
    if (null_calib_ > 0 && !native) {
      auto& [zsum, zcount] = null_lse_[{l, h}];
      if (n >= null_calib_ && n < window_) {
        const ArrayXd first = sc.head(null_calib_);
        const double m0 = first.maxCoeff();
        zsum += m0 + std::log((first - m0).exp().sum());
        ++zcount;
      }
      if (n >= window_ && zcount > 0) z = zsum / static_cast<double>(zcount);
    }
    // A fitted sink: the table's logit and value of (l, h) once token 0 has left the window.
    const bool fitted = fitted_ && !native && n >= window_;
    if (fitted) z = fitted_->logits[static_cast<size_t>(l * nh + h)];
    const double mx = std::max(sc.maxCoeff(), z);
    const ArrayXd e = (sc - mx).exp();
    const double ez = z > -INFINITY ? std::exp(z - mx) : 0.0;
    const VectorXd p = (e / (e.sum() + ez)).matrix();
    std::map<int64_t, double>& probs = probs_[{l, h}];
    probs.clear();
    for (int64_t i = 0; i < ns; ++i) probs[sp[static_cast<size_t>(i)]] = p[i];
    VectorXd o = V.transpose() * p;
    if (fitted && fitted_->has_values() && ez > 0) {
      const float* u = fitted_->values.data() + (l * nh + h) * hd;
      for (int64_t i = 0; i < hd; ++i) o[i] += ez / (e.sum() + ez) * u[i];
    }
    out.segment(h * hd, hd) = o.cast<float>();
  }
  return out;
}

std::vector<float> NaiveReference::step(TokenId token) {
  const auto& c = m_.config();
  const int64_t d = c.n_embd, hd = c.head_dim;
  const int64_t n = n_++;
  const float eps = c.rms_eps;
  VectorXf x(d);
  ops::dequantize_weight_row(*m_.find_matrix("token_embd.weight"), token, x.data());
  x = (x.cast<double>() * arch_.embd_scale).cast<float>();
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    auto norm = [&](const char* t) { return m_.find_vector(b + t); };
    // Attention block.
    const VectorXf xn = rms(x, norm("attn_norm.weight"), eps);
    VectorXf q = mm(b + "attn_q.weight", xn);
    VectorXf k = mm(b + "attn_k.weight", xn);
    if (arch_.gemma) {
      q = rms_heads(q, norm("attn_q_norm.weight"), c.n_head, hd, eps);
      k = rms_heads(k, norm("attn_k_norm.weight"), c.n_head_kv, hd, eps);
    }
    k_[l][n] = k;
    v_[l][n] = mm(b + "attn_v.weight", xn);
    VectorXf o = mm(b + "attn_output.weight", attend(l, n, q));
    if (arch_.gemma) o = rms(o, norm("post_attention_norm.weight"), eps);
    x += o;
    // Feed-forward block: SiLU(g) u (llama), GELU-tanh(g) u (gemma).
    const VectorXf xf = rms(x, norm("ffn_norm.weight"), eps);
    const ArrayXd g = mm(b + "ffn_gate.weight", xf).cast<double>().array();
    const ArrayXd u = mm(b + "ffn_up.weight", xf).cast<double>().array();
    const ArrayXd act =
        arch_.gemma
            ? ArrayXd(0.5 * g * (1.0 + (std::sqrt(2.0 / M_PI) * (g + 0.044715 * g.cube())).tanh()))
            : ArrayXd(g / (1.0 + (-g).exp()));
    o = mm(b + "ffn_down.weight", (act * u).cast<float>().matrix());
    if (arch_.gemma) o = rms(o, norm("post_ffw_norm.weight"), eps);
    x += o;
    // Forget what no later span of this layer can reach (spans only move forward); with
    // spans from outside, keep everything.
    if (span_fn_) continue;
    const std::vector<int64_t> next = span(n + 1, l);
    for (auto it = k_[l].begin(); it != k_[l].end();) {
      if (std::find(next.begin(), next.end(), it->first) == next.end()) {
        v_[l].erase(it->first);
        it = k_[l].erase(it);
      } else {
        ++it;
      }
    }
  }
  VectorXf logits = mm("output.weight", rms(x, m_.find_vector("output_norm.weight"), eps));
  if (arch_.logit_softcap > 0) {
    const double cap = arch_.logit_softcap;
    logits = (cap * (logits.cast<double>().array() / cap).tanh()).cast<float>().matrix();
  }
  return std::vector<float>(logits.data(), logits.data() + logits.size());
}

}  // namespace spillway::test
