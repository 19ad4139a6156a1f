#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "spillway/core/error.h"
#include "spillway/core/quant.h"
#include "spillway/model/llama.h"
#include "spillway/ops/attention.h"
#include "spillway/ops/ops.h"

namespace spillway::model {

namespace {
constexpr int kMaxRunsPerToken = 8;
}

Forward::Forward(const LlamaModel& model, ThreadPool& pool, int64_t max_batch)
    : model_(model), pool_(pool), max_batch_(max_batch) {
  if (max_batch < 1) throw InvalidArgument("Forward: max_batch must be >= 1");
  const LlamaConfig& c = model.config();
  const auto B = static_cast<size_t>(max_batch);
  x_.resize(B * c.n_embd);
  xn_.resize(B * c.n_embd);
  q_.resize(B * c.n_head * c.head_dim);
  qr_.resize(B * 2 * c.n_head * c.head_dim);
  k_.resize(B * c.n_head_kv * c.head_dim);
  v_.resize(B * c.n_head_kv * c.head_dim);
  attn_.resize(B * c.n_head * c.head_dim);
  gate_.resize(B * c.n_ff);
  up_.resize(B * c.n_ff);
  q_index_.reserve(B * kMaxRunsPerToken);
  key_runs_.reserve(B * kMaxRunsPerToken);
  first_item_.resize(B + 1);
}

namespace {
// Attention work items of a step: one token's pieces are spread over threads (and merged
// after) when tokens x KV heads alone cannot keep the threads busy (decode); otherwise a
// thread takes whole (token, KV head) items. Either way the pieces and their merge are
// the same, so the results are too.
bool split_pieces(int64_t T, int64_t n_head_kv, int n_threads) {
  return n_threads > 1 && T * n_head_kv < 4 * int64_t{n_threads};
}
}  // namespace

void Forward::reserve_span(int64_t max_span) {
  const auto& c = model_.config();
  const ops::AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim, 0, DType::F32, 1.0f};
  // Split items: fewer than 4 * n_threads (token, KV head) pairs, each with its pieces.
  const size_t need = static_cast<size_t>(4 * int64_t{pool_.size()} *
                                          ops::attention_pieces(std::max<int64_t>(1, max_span)) *
                                          ops::attention_part_floats(shape));
  if (attn_parts_.size() < need) attn_parts_.resize(need);
}

const float* Forward::run(const TokenId* tokens, const kv::BatchPlan& plan, kv::KvStorage& kv,
                          Logits which) {
  const LlamaConfig& c = model_.config();
  const int64_t T = static_cast<int64_t>(plan.tokens.size());
  if (T < 1 || T > max_batch_)
    throw InvalidArgument(
        fmt::format("forward: batch of {} tokens (1..{} allowed)", T, max_batch_));
  const int64_t d = c.n_embd, hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
  const int64_t qdim = nh * hd, kvdim = nkv * hd;

  // Check the plan against the storage once, and size the attention scratch.
  int64_t max_span = 0;
  q_index_.resize(plan.ranges.size());
  key_runs_.resize(plan.ranges.size());
  for (int64_t t = 0; t < T; ++t) {
    const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
    if (tp.write_slot < 0 || tp.write_slot >= kv.n_slots() ||
        tp.range_end - tp.range_begin > kMaxRunsPerToken || tp.range_end <= tp.range_begin)
      throw InvalidArgument(
          fmt::format("forward: bad plan for token {} (slot {}, {} ranges, "
                      "storage {} slots)",
                      tp.stream_index, tp.write_slot, tp.range_end - tp.range_begin, kv.n_slots()));
    int64_t span = 0;
    int64_t qpos[2] = {tp.key_pos, tp.key_pos};
    int n_q = 0;
    for (int32_t r = tp.range_begin; r < tp.range_end; ++r) {
      const kv::SlotRange& sr = plan.ranges[static_cast<size_t>(r)];
      if (sr.begin < 0 || sr.end > kv.n_slots() || sr.begin >= sr.end)
        throw InvalidArgument(fmt::format("forward: bad slot range [{}, {}) for token {}", sr.begin,
                                          sr.end, tp.stream_index));
      span += sr.end - sr.begin;
      int idx = -1;
      for (int i = 0; i < n_q; ++i)
        if (qpos[i] == sr.query_pos) idx = i;
      if (idx < 0) {
        if (n_q == 2)
          throw InvalidArgument(
              fmt::format("forward: token {} uses more than two query "
                          "positions",
                          tp.stream_index));
        qpos[n_q] = sr.query_pos;
        idx = n_q++;
      }
      q_index_[static_cast<size_t>(r)] = static_cast<int8_t>(idx);
    }
    max_span = std::max(max_span, span);
  }
  reserve_span(max_span);
  const bool split = split_pieces(T, nkv, pool_.size());
  int64_t n_items = 0;
  for (int64_t t = 0; t < T; ++t) {
    first_item_[static_cast<size_t>(t)] = n_items;
    n_items += split ? nkv * ops::attention_pieces(plan.span_size(static_cast<size_t>(t))) : nkv;
  }
  first_item_[static_cast<size_t>(T)] = n_items;
  const bool record = record_layer_ >= 0 && record_layer_ < c.n_layer;
  const int64_t last_span = plan.span_size(static_cast<size_t>(T - 1));
  if (record) recorded_.assign(static_cast<size_t>(nh * last_span), 0.0f);

  // Embedding.
  const ops::WeightMatrix& emb = model_.token_embd();
  for (int64_t t = 0; t < T; ++t) {
    const TokenId id = tokens[t];
    if (id < 0 || id >= c.n_vocab)
      throw InvalidArgument(fmt::format("token id {} out of range [0, {})", id, c.n_vocab));
    dequantize_row(emb.type, static_cast<const std::byte*>(emb.data) + emb.row_bytes * id,
                   x_.data() + t * d, d);
  }

  const double* inv_freq = model_.rope_inv_freq().data();
  const ops::AttentionShape shape{
      nh,        nkv,
      hd,        kv.n_slots() * hd,
      kv.type(), static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)))};
  const int64_t part_floats = ops::attention_part_floats(shape);
  const int64_t parts_per_thread = ops::attention_pieces(max_span) * part_floats;

  // Key runs of every plan range with its rotated query: the same for all layers.
  for (int64_t t = 0; t < T; ++t) {
    const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
    for (int32_t r = tp.range_begin; r < tp.range_end; ++r) {
      const auto ri = static_cast<size_t>(r);
      const kv::SlotRange& sr = plan.ranges[ri];
      key_runs_[ri] = {sr.begin, sr.end, qr_.data() + (t * 2 + q_index_[ri]) * qdim};
    }
  }
  const auto token_runs = [&](int64_t t, int& n_runs) {
    const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
    n_runs = tp.range_end - tp.range_begin;
    return key_runs_.data() + tp.range_begin;
  };

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LlamaLayer& L = model_.layer(l);
    for (int64_t t = 0; t < T; ++t)
      ops::rmsnorm(x_.data() + t * d, L.attn_norm, xn_.data() + t * d, d, c.rms_eps);
    act_.set(xn_.data(), T, d);
    const ops::MatmulOut qkv[3] = {
        {&L.wq, q_.data(), qdim}, {&L.wk, k_.data(), kvdim}, {&L.wv, v_.data(), kvdim}};
    ops::matmul_many(qkv, 3, act_, pool_);

    // Keys rotated once at the plan's key position and stored; queries rotated at each
    // distinct query position their ranges ask for.
    pool_.parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
        float* kt = k_.data() + t * kvdim;
        ops::rope_with(kt, nkv, hd, c.n_rot, tp.key_pos, inv_freq);
        kv.store(l, tp.write_slot, kt, v_.data() + t * kvdim);
        bool done[2] = {false, false};
        for (int32_t r = tp.range_begin; r < tp.range_end; ++r) {
          const int qi = q_index_[static_cast<size_t>(r)];
          if (done[qi]) continue;
          done[qi] = true;
          float* dst = qr_.data() + (t * 2 + qi) * qdim;
          std::memcpy(dst, q_.data() + t * qdim, static_cast<size_t>(qdim) * sizeof(float));
          ops::rope_with(dst, nh, hd, c.n_rot, plan.ranges[static_cast<size_t>(r)].query_pos,
                         inv_freq);
        }
      }
    });

    const void* kbase = kv.k(l, 0);
    const void* vbase = kv.v(l, 0);
    if (split) {
      // Items (token, KV head, piece), pieces of one (token, KV head) consecutive.
      pool_.parallel_for(n_items, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t item = i0; item < i1; ++item) {
          int64_t t = 0;
          while (first_item_[static_cast<size_t>(t + 1)] <= item) ++t;
          const int64_t span = plan.span_size(static_cast<size_t>(t));
          const int64_t local = item - first_item_[static_cast<size_t>(t)];
          const int64_t n_pieces = ops::attention_pieces(span);
          const int64_t g = local / n_pieces, p = local % n_pieces;
          int n_runs = 0;
          const ops::KeyRun* runs = token_runs(t, n_runs);
          ops::attend_piece(shape, g, runs, n_runs, p * ops::kAttnPiece,
                            std::min(span, (p + 1) * ops::kAttnPiece), kbase, vbase,
                            attn_parts_.data() + item * part_floats);
        }
      });
      for (int64_t t = 0; t < T; ++t) {
        const int64_t n_pieces = ops::attention_pieces(plan.span_size(static_cast<size_t>(t)));
        for (int64_t g = 0; g < nkv; ++g) {
          const int64_t first = first_item_[static_cast<size_t>(t)] + g * n_pieces;
          ops::attend_merge(shape, g, attn_parts_.data() + first * part_floats, n_pieces,
                            attn_.data() + t * qdim);
        }
      }
    } else {
      // Items (token, KV head), a static share per work item with its own partials.
      pool_.run([&](int ith, int nth) {
        float* parts = attn_parts_.data() + static_cast<size_t>(ith) * parts_per_thread;
        const int64_t i0 = n_items * ith / nth, i1 = n_items * (ith + 1) / nth;
        for (int64_t item = i0; item < i1; ++item) {
          const int64_t t = item / nkv, g = item % nkv;
          int n_runs = 0;
          const ops::KeyRun* runs = token_runs(t, n_runs);
          ops::attend_group(shape, g, runs, n_runs, kbase, vbase, attn_.data() + t * qdim, parts);
        }
      });
    }
    if (record && l == record_layer_) {
      int n_runs = 0;
      const ops::KeyRun* runs = token_runs(T - 1, n_runs);
      for (int64_t g = 0; g < nkv; ++g) {
        ops::attention_probs(shape, g, runs, n_runs, kbase,
                             recorded_.data() + g * (nh / nkv) * last_span);
      }
    }

    act_.set(attn_.data(), T, qdim);
    ops::matmul(L.wo, act_, xn_.data(), d, pool_);
    for (int64_t i = 0; i < T * d; ++i) x_[static_cast<size_t>(i)] += xn_[static_cast<size_t>(i)];

    for (int64_t t = 0; t < T; ++t)
      ops::rmsnorm(x_.data() + t * d, L.ffn_norm, xn_.data() + t * d, d, c.rms_eps);
    act_.set(xn_.data(), T, d);
    ops::matmul_swiglu(L.w_gate, L.w_up, act_, gate_.data(), up_.data(), c.n_ff, pool_);
    act_.set(gate_.data(), T, c.n_ff);
    ops::matmul(L.w_down, act_, xn_.data(), d, pool_);
    for (int64_t i = 0; i < T * d; ++i) x_[static_cast<size_t>(i)] += xn_[static_cast<size_t>(i)];
  }

  if (which == Logits::kNone) return nullptr;
  const int64_t first = which == Logits::kAll ? 0 : T - 1;
  const int64_t rows = T - first;
  for (int64_t t = first; t < T; ++t)
    ops::rmsnorm(x_.data() + t * d, model_.output_norm(), xn_.data() + (t - first) * d, d,
                 c.rms_eps);
  if (logits_.size() < static_cast<size_t>(rows * c.n_vocab))
    logits_.resize(static_cast<size_t>(rows * c.n_vocab));
  act_.set(xn_.data(), rows, d);
  ops::matmul(model_.output(), act_, logits_.data(), c.n_vocab, pool_);
  return logits_.data();
}

}  // namespace spillway::model
