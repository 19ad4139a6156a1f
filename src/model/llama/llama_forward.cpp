// Llama: the forward pass. Per layer: x += Wo attn(RoPE(Wq n(x)), RoPE(Wk n(x)), Wv n(x));
// x += W_down (SiLU(W_gate n(x)) * W_up n(x)), n = RMSNorm with the layer's weights.
#include <cmath>

#include "llama.h"

namespace spillway::model::llama {

namespace {

class LlamaForward final : public detail::TransformerForward {
 public:
  LlamaForward(const LlamaModel& m, ThreadPool& pool, int64_t max_batch)
      : TransformerForward(
            m.config(), pool, max_batch,
            static_cast<float>(1.0 / std::sqrt(static_cast<double>(m.config().head_dim)))),
        m_(m) {}

 protected:
  void layer(int64_t l) override {
    const ModelConfig& c = config_;
    const int64_t d = c.n_embd, qdim = c.n_head * c.head_dim, kvdim = c.n_head_kv * c.head_dim;
    const LlamaLayer& L = m_.layer(l);
    norm_rows(x_.data(), L.attn_norm, xn_.data(), d);
    act_.set(xn_.data(), T_, d);
    const ops::MatmulOut qkv[3] = {
        {&L.wq, q_.data(), qdim}, {&L.wk, k_.data(), kvdim}, {&L.wv, v_.data(), kvdim}};
    ops::matmul_many(qkv, 3, act_, pool_);
    attention(l, m_.rope());
    prefetch_next({&L.wo});
    act_.set(attn_.data(), T_, qdim);
    ops::matmul(L.wo, act_, xn_.data(), d, pool_);
    prefetch_next({&L.w_gate, &L.w_up}, true);
    add_residual(xn_.data());

    norm_rows(x_.data(), L.ffn_norm, xn_.data(), d);
    act_.set(xn_.data(), T_, d);
    ops::matmul_swiglu(L.w_gate, L.w_up, act_, gate_.data(), up_.data(), c.n_ff, pool_);
    prefetch_next({&L.w_down});
    act_.set(gate_.data(), T_, c.n_ff);
    ops::matmul(L.w_down, act_, xn_.data(), d, pool_);
    prefetch_after_layer(l);
    add_residual(xn_.data());
  }
  const ops::WeightMatrix& embedding() const override { return m_.token_embd(); }
  const float* output_norm() const override { return m_.output_norm(); }
  const ops::WeightMatrix& output_matrix() const override { return m_.output(); }
  std::array<const ops::WeightMatrix*, 3> qkv_matrices(int64_t l) const override {
    const LlamaLayer& L = m_.layer(l);
    return {&L.wq, &L.wk, &L.wv};
  }

 private:
  const LlamaModel& m_;
};

}  // namespace

std::unique_ptr<Forward> LlamaModel::make_forward(ThreadPool& pool, int64_t max_batch) const {
  return std::make_unique<LlamaForward>(*this, pool, max_batch);
}

}  // namespace spillway::model::llama
