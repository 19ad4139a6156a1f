// Gemma 3: the forward pass. x = sqrt(n_embd) * embedding; per layer
//   h = n_a(x); q = QN(Wq h), k = KN(Wk h), v = Wv h (QN, KN: RMSNorm per head)
//   x += n_pa(Wo attn(RoPE_l(q), RoPE_l(k), v))
//   x += n_pf(W_down (GELU(W_gate n_f(x)) * W_up n_f(x)))
// RoPE_l: the local or global table of layer l; logits = W_out n_out(x), optionally
// soft-capped (c tanh(logit / c)).
#include "gemma3.h"

namespace spillway::model::gemma3 {

namespace {

class Gemma3Forward final : public detail::TransformerForward {
 public:
  Gemma3Forward(const Gemma3Model& m, ThreadPool& pool, int64_t max_batch)
      : TransformerForward(m.config(), pool, max_batch, m.gemma_config().attn_scale), m_(m) {}

 protected:
  void layer(int64_t l) override {
    const ModelConfig& c = config_;
    const int64_t d = c.n_embd, qdim = c.n_head * c.head_dim, kvdim = c.n_head_kv * c.head_dim;
    const Gemma3Layer& L = m_.layer(l);
    norm_rows(x_.data(), L.attn_norm, xn_.data(), d);
    act_.set(xn_.data(), T_, d);
    const ops::MatmulOut qkv[3] = {
        {&L.wq, q_.data(), qdim}, {&L.wk, k_.data(), kvdim}, {&L.wv, v_.data(), kvdim}};
    ops::matmul_many(qkv, 3, act_, pool_);
    norm_heads(q_.data(), L.q_norm, c.n_head);
    norm_heads(k_.data(), L.k_norm, c.n_head_kv);
    attention(l, m_.rope(l));
    prefetch_next({&L.wo});
    act_.set(attn_.data(), T_, qdim);
    ops::matmul(L.wo, act_, xn_.data(), d, pool_);
    prefetch_next({&L.w_gate, &L.w_up});
    norm_rows(xn_.data(), L.post_attn_norm, xn_.data(), d);
    add_residual(xn_.data());

    norm_rows(x_.data(), L.ffn_norm, xn_.data(), d);
    act_.set(xn_.data(), T_, d);
    const ops::MatmulOut gate_up[2] = {{&L.w_gate, gate_.data(), c.n_ff},
                                       {&L.w_up, up_.data(), c.n_ff}};
    ops::matmul_many(gate_up, 2, act_, pool_);
    prefetch_next({&L.w_down});
    ops::geglu(gate_.data(), up_.data(), T_ * c.n_ff);
    act_.set(gate_.data(), T_, c.n_ff);
    ops::matmul(L.w_down, act_, xn_.data(), d, pool_);
    prefetch_after_layer(l);
    norm_rows(xn_.data(), L.post_ffn_norm, xn_.data(), d);
    add_residual(xn_.data());
  }
  const ops::WeightMatrix& embedding() const override { return m_.token_embd(); }
  float embedding_scale() const override { return m_.gemma_config().embd_scale; }
  const float* output_norm() const override { return m_.output_norm(); }
  const ops::WeightMatrix& output_matrix() const override { return m_.output(); }
  std::array<const ops::WeightMatrix*, 3> qkv_matrices(int64_t l) const override {
    const Gemma3Layer& L = m_.layer(l);
    return {&L.wq, &L.wk, &L.wv};
  }
  float logit_softcap() const override { return m_.gemma_config().final_logit_softcap; }

 private:
  const Gemma3Model& m_;
};

}  // namespace

std::unique_ptr<Forward> Gemma3Model::make_forward(ThreadPool& pool, int64_t max_batch) const {
  return std::make_unique<Gemma3Forward>(*this, pool, max_batch);
}

}  // namespace spillway::model::gemma3
