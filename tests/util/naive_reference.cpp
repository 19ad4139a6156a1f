#include "util/naive_reference.h"

#include <algorithm>
#include <cmath>

#include "model/gemma3/gemma3.h"
#include "model/llama/llama.h"
#include "spillway/core/quant.h"
#include "spillway/ops/matmul.h"
#include "spillway/ops/ops.h"

namespace spillway::test {

namespace {

void rms(const float* x, const float* w, float* y, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double scale = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[i] * scale * w[i]);
}

}  // namespace

NaiveReference::NaiveReference(const model::Model& m, int64_t sinks, int64_t window, bool absolute,
                               bool local_native)
    : m_(m),
      sinks_(sinks),
      window_(window),
      absolute_(absolute),
      local_native_(local_native),
      pool_(1) {
  k_.resize(static_cast<size_t>(m.config().n_layer));
  v_.resize(static_cast<size_t>(m.config().n_layer));
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

std::vector<double> NaiveReference::rotate(const float* x, int64_t hd, const Rope& r,
                                           int64_t pos) const {
  std::vector<double> out(x, x + hd);
  for (int64_t i = 0; i < r.n_rot / 2; ++i) {
    const double theta = static_cast<double>(pos) * r.inv_freq[static_cast<size_t>(i)];
    const double c = std::cos(theta), s = std::sin(theta);
    const int64_t a = r.halves ? i : 2 * i, b = r.halves ? i + r.n_rot / 2 : 2 * i + 1;
    out[a] = x[a] * c - x[b] * s;
    out[b] = x[a] * s + x[b] * c;
  }
  return out;
}

void NaiveReference::mm(const ops::WeightMatrix& w, const std::vector<float>& in,
                        std::vector<float>& out) {
  out.resize(static_cast<size_t>(w.rows));
  if (exact_) {
    std::vector<float> row(static_cast<size_t>(w.cols));
    for (int64_t r = 0; r < w.rows; ++r) {
      ops::dequantize_weight_row(w, r, row.data());  // either layout
      double acc = 0;
      for (int64_t c = 0; c < w.cols; ++c) acc += static_cast<double>(row[c]) * in[c];
      out[static_cast<size_t>(r)] = static_cast<float>(acc);
    }
    return;
  }
  ops::Activations a;
  a.set(in.data(), 1, w.cols);
  ops::matmul(w, a, out.data(), w.rows, pool_);
}

void NaiveReference::attend(int64_t l, int64_t n, const std::vector<float>& q, const Rope& rope,
                            double scale, std::vector<float>& out) {
  const auto& c = m_.config();
  const int64_t hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
  const std::vector<int64_t> sp = span(n, l);
  const int64_t qpos = absolute_ ? n : static_cast<int64_t>(sp.size()) - 1;
  out.assign(static_cast<size_t>(nh * hd), 0.0f);
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / (nh / nkv);
    const std::vector<double> qr = rotate(q.data() + h * hd, hd, rope, qpos);
    // A dropped head leaves out the sinks once the window no longer reaches them.
    const bool drop = dropped_.count({l, h}) > 0 && window_ >= 0 && n >= sinks_ + window_;
    std::vector<double> sc(sp.size());
    double mx = -1e300;
    for (size_t i = 0; i < sp.size(); ++i) {
      const int64_t pos = absolute_ ? sp[i] : static_cast<int64_t>(i);
      const std::vector<double> kr = rotate(k_[l].at(sp[i]).data() + g * hd, hd, rope, pos);
      double dot = 0;
      for (int64_t j = 0; j < hd; ++j) dot += qr[j] * kr[j];
      sc[i] = drop && sp[i] < sinks_ ? -INFINITY : dot * scale;
      mx = std::max(mx, sc[i]);
    }
    // The null sink: calibrate on the first tokens, then join the softmax without a value.
    double z = -INFINITY;
    const bool native = local_native_ && m_.config().layers[static_cast<size_t>(l)].window > 0;
    if (null_calib_ > 0 && !native) {
      auto& [zsum, zcount] = null_lse_[{l, h}];
      if (n >= null_calib_ && n < window_) {
        double m0 = -1e300, s0 = 0;
        for (size_t i = 0; i < static_cast<size_t>(null_calib_); ++i) m0 = std::max(m0, sc[i]);
        for (size_t i = 0; i < static_cast<size_t>(null_calib_); ++i) s0 += std::exp(sc[i] - m0);
        zsum += m0 + std::log(s0);
        ++zcount;
      }
      if (n >= window_ && zcount > 0) z = zsum / static_cast<double>(zcount);
    }
    mx = std::max(mx, z);
    double sum = z > -INFINITY ? std::exp(z - mx) : 0.0;
    for (double& s : sc) sum += (s = std::exp(s - mx));
    std::map<int64_t, double>& probs = probs_[{l, h}];
    probs.clear();
    for (size_t i = 0; i < sp.size(); ++i) probs[sp[i]] = sc[i] / sum;
    for (int64_t j = 0; j < hd; ++j) {
      double acc = 0;
      for (size_t i = 0; i < sp.size(); ++i) acc += sc[i] / sum * v_[l].at(sp[i])[g * hd + j];
      out[h * hd + j] = static_cast<float>(acc);
    }
  }
}

std::vector<float> NaiveReference::step(TokenId token) {
  const auto& c = m_.config();
  const int64_t d = c.n_embd, hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
  const int64_t n = n_++;
  std::vector<float> x(static_cast<size_t>(d)), xn(static_cast<size_t>(d));
  std::vector<float> q, k, v, att, o, gate, up;
  const auto* llama = dynamic_cast<const model::llama::LlamaModel*>(&m_);
  const auto* gemma = dynamic_cast<const model::gemma3::Gemma3Model*>(&m_);
  const ops::WeightMatrix& emb = llama ? llama->token_embd() : gemma->token_embd();
  ops::dequantize_weight_row(emb, token, x.data());
  if (gemma)
    for (float& e : x) e *= std::sqrt(static_cast<float>(d));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    if (llama) {
      const auto& L = llama->layer(l);
      const auto& R = llama->rope();
      const Rope rope{false, R.n_rot, R.inv_freq};
      rms(x.data(), L.attn_norm, xn.data(), d, c.rms_eps);
      mm(L.wq, xn, q);
      mm(L.wk, xn, k);
      mm(L.wv, xn, v);
      k_[l][n] = k;
      v_[l][n] = v;
      attend(l, n, q, rope, 1.0 / std::sqrt(static_cast<double>(hd)), att);
      mm(L.wo, att, o);
      for (int64_t i = 0; i < d; ++i) x[i] += o[i];
      rms(x.data(), L.ffn_norm, xn.data(), d, c.rms_eps);
      mm(L.w_gate, xn, gate);
      mm(L.w_up, xn, up);
      for (int64_t i = 0; i < c.n_ff; ++i)
        gate[i] =
            static_cast<float>(gate[i] / (1.0 + std::exp(-static_cast<double>(gate[i]))) * up[i]);
      mm(L.w_down, gate, o);
      for (int64_t i = 0; i < d; ++i) x[i] += o[i];
    } else {
      const auto& L = gemma->layer(l);
      const auto& R = gemma->rope(l);
      const Rope rope{true, R.n_rot, R.inv_freq};
      rms(x.data(), L.attn_norm, xn.data(), d, c.rms_eps);
      mm(L.wq, xn, q);
      mm(L.wk, xn, k);
      mm(L.wv, xn, v);
      for (int64_t h = 0; h < nh; ++h)
        rms(q.data() + h * hd, L.q_norm, q.data() + h * hd, hd, c.rms_eps);
      for (int64_t h = 0; h < nkv; ++h)
        rms(k.data() + h * hd, L.k_norm, k.data() + h * hd, hd, c.rms_eps);
      k_[l][n] = k;
      v_[l][n] = v;
      attend(l, n, q, rope, gemma->gemma_config().attn_scale, att);
      mm(L.wo, att, o);
      rms(o.data(), L.post_attn_norm, o.data(), d, c.rms_eps);
      for (int64_t i = 0; i < d; ++i) x[i] += o[i];
      rms(x.data(), L.ffn_norm, xn.data(), d, c.rms_eps);
      mm(L.w_gate, xn, gate);
      mm(L.w_up, xn, up);
      for (int64_t i = 0; i < c.n_ff; ++i) {
        const double g = gate[i];
        const double gelu =
            0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
        gate[i] = static_cast<float>(gelu * up[i]);
      }
      mm(L.w_down, gate, o);
      rms(o.data(), L.post_ffn_norm, o.data(), d, c.rms_eps);
      for (int64_t i = 0; i < d; ++i) x[i] += o[i];
    }
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
  const float* out_norm = llama ? llama->output_norm() : gemma->output_norm();
  rms(x.data(), out_norm, xn.data(), d, c.rms_eps);
  std::vector<float> logits;
  mm(llama ? llama->output() : gemma->output(), xn, logits);
  if (gemma && gemma->gemma_config().final_logit_softcap > 0) {
    const double cap = gemma->gemma_config().final_logit_softcap;
    for (float& z : logits) z = static_cast<float>(cap * std::tanh(z / cap));
  }
  return logits;
}

}  // namespace spillway::test
