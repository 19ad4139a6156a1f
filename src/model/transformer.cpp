#include "transformer.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "spillway/core/error.h"
#include "spillway/core/quant.h"
#include "spillway/kv/virtual_sinks.h"

namespace spillway::model::detail {

// --- loading -------------------------------------------------------------------------------

namespace {

std::string shape_str(const gguf::TensorInfo& t) {
  std::string s = "[";
  for (int i = 0; i < t.n_dims; ++i) s += fmt::format("{}{}", i ? ", " : "", t.ne[i]);
  return s + "]";
}

}  // namespace

ModelConfig read_common_config(const gguf::GgufFile& file) {
  const auto& meta = file.metadata();
  ModelConfig c;
  c.architecture = meta.get<std::string>("general.architecture");
  const std::string p = c.architecture + ".";
  c.name = meta.find<std::string>("general.name").value_or("");
  c.n_layer = meta.get<uint32_t>(p + "block_count");
  c.n_embd = meta.get<uint32_t>(p + "embedding_length");
  c.n_head = meta.get<uint32_t>(p + "attention.head_count");
  c.n_head_kv = meta.find<uint32_t>(p + "attention.head_count_kv").value_or(c.n_head);
  c.n_ff = meta.get<uint32_t>(p + "feed_forward_length");
  // Only a default and a warning threshold (nothing is sized by it): any int64 is taken.
  c.n_ctx_train = meta.get<int64_t>(p + "context_length");
  c.rms_eps = static_cast<float>(meta.get<double>(p + "attention.layer_norm_rms_epsilon"));

  auto bad = [&](const std::string& what) {
    return FormatError(fmt::format("{}: inconsistent hyperparameters: {}", file.path(), what));
  };
  if (c.n_ctx_train < 0) throw bad(fmt::format("context_length {} < 0", c.n_ctx_train));
  if (c.n_layer < 1 || c.n_embd < 1 || c.n_head < 1 || c.n_head_kv < 1 || c.n_ff < 1)
    throw bad(
        fmt::format("block_count {}, embedding_length {}, head_count {}, head_count_kv {}, "
                    "feed_forward_length {} must all be >= 1",
                    c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff));
  if (c.n_layer > 4096 || c.n_embd > (1 << 20) || c.n_head > 4096 || c.n_ff > (1 << 22))
    throw bad(
        fmt::format("block_count {}, embedding_length {}, head_count {} or "
                    "feed_forward_length {} is beyond what this library supports",
                    c.n_layer, c.n_embd, c.n_head, c.n_ff));
  if (c.n_head % c.n_head_kv != 0)
    throw bad(
        fmt::format("head_count {} is not a multiple of head_count_kv {}", c.n_head, c.n_head_kv));
  const auto key_len = meta.find<uint32_t>(p + "attention.key_length");
  const auto value_len = meta.find<uint32_t>(p + "attention.value_length");
  if (key_len) {
    c.head_dim = *key_len;
  } else {
    if (c.n_embd % c.n_head != 0)
      throw bad(fmt::format("embedding_length {} is not a multiple of head_count {}", c.n_embd,
                            c.n_head));
    c.head_dim = c.n_embd / c.n_head;
  }
  if (c.head_dim < 2 || c.head_dim > 4096)
    throw bad(fmt::format("head dimension {} outside [2, 4096]", c.head_dim));
  if (value_len && *value_len != c.head_dim)
    throw UnsupportedError(fmt::format(
        "{}: {}attention.value_length = {} differs from the key length {}; not supported",
        file.path(), p, *value_len, c.head_dim));
  if (!(c.rms_eps > 0)) throw bad(fmt::format("layer_norm_rms_epsilon {} <= 0", c.rms_eps));
  if (auto v = meta.find<uint32_t>(p + "vocab_size")) {
    c.n_vocab = *v;
  } else if (meta.contains("tokenizer.ggml.tokens")) {
    const gguf::Value* tokens = meta.value("tokenizer.ggml.tokens");
    c.n_vocab = tokens->array() ? static_cast<int64_t>(tokens->array()->items.size()) : 0;
  }
  if (c.n_vocab < 1) throw bad("vocabulary size unknown (no vocab_size, no tokenizer tokens)");
  c.tied_output = file.find_tensor("output.weight") == nullptr;
  c.layers.assign(static_cast<size_t>(c.n_layer), kv::LayerAttention{});
  return c;
}

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

void InterleavedWeights::interleave(const gguf::GgufFile& f,
                                    const std::vector<ops::WeightMatrix*>& ms) {
  if (buf_.data() != nullptr) {
    throw InvalidArgument("InterleavedWeights: already holds a model's weights");
  }
  // One copy per distinct source, each starting on a cache line.
  constexpr uint64_t kLine = 64;
  std::vector<const void*> sources;
  std::vector<uint64_t> offsets;
  uint64_t total = 0;
  for (const ops::WeightMatrix* m : ms) {
    if (!ops::can_interleave(m->type) || m->layout != ops::WeightLayout::kRows || m->rows == 0 ||
        std::find(sources.begin(), sources.end(), m->data) != sources.end())
      continue;
    sources.push_back(m->data);
    offsets.push_back(total);
    total += (matrix_bytes(*m) + kLine - 1) / kLine * kLine;
  }
  if (total == 0) return;
  buf_ = HugePageBuffer(static_cast<size_t>(total));
  std::vector<ops::WeightMatrix> copies(sources.size());
  std::vector<bool> done(sources.size(), false);
  for (ops::WeightMatrix* m : ms) {
    const auto it = std::find(sources.begin(), sources.end(), m->data);
    if (it == sources.end()) continue;
    const auto i = static_cast<size_t>(it - sources.begin());
    if (!done[i]) {
      copies[i] = ops::interleave_rows8(*m, buf_.data() + offsets[i]);
      f.release_pages(m->data, matrix_bytes(*m));
      done[i] = true;
    }
    *m = copies[i];
  }
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

RopeKeys read_rope_keys(const gguf::GgufFile& file, const ModelConfig& common) {
  const auto& meta = file.metadata();
  const std::string p = common.architecture + ".";
  auto bad = [&](const std::string& what) {
    return FormatError(fmt::format("{}: inconsistent hyperparameters: {}", file.path(), what));
  };
  RopeKeys k;
  k.n_rot = meta.find<uint32_t>(p + "rope.dimension_count").value_or(common.head_dim);
  if (k.n_rot < 2 || k.n_rot > common.head_dim || k.n_rot % 2 != 0)
    throw bad(fmt::format("rope.dimension_count {} must be even and in [2, head_dim {}]", k.n_rot,
                          common.head_dim));
  const std::string scaling = meta.find<std::string>(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    const double factor = meta.get<double>(p + "rope.scaling.factor");
    if (!(factor > 0)) throw bad(fmt::format("rope.scaling.factor {} <= 0", factor));
    k.freq_scale = 1.0 / factor;
  } else if (scaling != "none") {
    throw UnsupportedError(
        fmt::format("{}: RoPE scaling type '{}' ({}rope.scaling.type) is not supported "
                    "(supported: none, linear)",
                    file.path(), scaling, p));
  }
  return k;
}

RopeTable make_rope(ops::RopeStyle style, int64_t n_rot, double base, double freq_scale,
                    const float* factors) {
  RopeTable r;
  r.style = style;
  r.n_rot = n_rot;
  r.inv_freq.resize(static_cast<size_t>(n_rot / 2));
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    double v =
        freq_scale * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(n_rot));
    if (factors) v /= factors[i];
    r.inv_freq[static_cast<size_t>(i)] = v;
  }
  return r;
}

// --- the forward pass ------------------------------------------------------------------------

namespace {
// Ranges one token may attend to: scattered caches (score-based policies) have many.
constexpr int64_t kMaxRunsPerToken = 1 << 20;

// Attention work items of a step: one token's pieces are spread over threads (and merged
// after) when tokens x KV heads alone cannot keep the threads busy (decode); otherwise a
// thread takes whole (token, KV head) items. Either way the pieces and their merge are
// the same, so the results are too.
bool split_pieces(int64_t T, int64_t n_head_kv, int n_threads) {
  return n_threads > 1 && T * n_head_kv < 4 * int64_t{n_threads};
}
}  // namespace

TransformerForward::TransformerForward(const ModelConfig& c, ThreadPool& pool, int64_t max_batch,
                                       float attn_scale)
    : config_(c), pool_(pool), max_batch_(max_batch), attn_scale_(attn_scale) {
  if (max_batch < 1) throw InvalidArgument("forward: max_batch must be >= 1");
  const auto B = static_cast<size_t>(max_batch);
  const size_t qdim = static_cast<size_t>(c.n_head * c.head_dim);
  const size_t kvdim = static_cast<size_t>(c.n_head_kv * c.head_dim);
  x_.resize(B * c.n_embd);
  xn_.resize(B * std::max<size_t>(c.n_embd, qdim));
  q_.resize(B * qdim);
  qr_.resize(B * 2 * qdim);  // grows with the step's query rotations
  k_.resize(B * kvdim);
  v_.resize(B * kvdim);
  attn_.resize(B * qdim);
  gate_.resize(B * c.n_ff);
  up_.resize(B * c.n_ff);
  edit_out_.resize(qdim);
  prob_offset_.resize(B + 1);
}

void TransformerForward::reserve_span(int64_t max_span) {
  const ModelConfig& c = config_;
  const ops::AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim, 0, DType::F32, 1.0f};
  // Split items: fewer than 4 * n_threads (token, KV head) pairs, each with its pieces;
  // whole items: one token's pieces per thread.
  const size_t need = static_cast<size_t>(4 * int64_t{pool_.size()} *
                                          ops::attention_pieces(std::max<int64_t>(1, max_span)) *
                                          ops::attention_part_floats(shape));
  if (attn_parts_.size() < need) attn_parts_.resize(need);
  // Decoding one token at a time over a scattered cache, a token may have a run and a
  // query rotation per key: room for that up front.
  if (max_batch_ == 1 && max_span > span_reserved_) {
    span_reserved_ = max_span;
    const auto runs = static_cast<size_t>(max_span + 2);
    if (qr_.size() < runs * static_cast<size_t>(c.n_head * c.head_dim))
      qr_.resize(runs * static_cast<size_t>(c.n_head * c.head_dim));
    run_reserve_ = runs;
  }
}

void TransformerForward::prepare_group(const Seq& s, const kv::BatchPlan& plan, int64_t n_slots,
                                       Group& g) {
  const int64_t T = s.T;
  if (static_cast<int64_t>(plan.tokens.size()) != T)
    throw InvalidArgument(fmt::format("forward: a layer group's plan has {} tokens, another {}",
                                      plan.tokens.size(), T));
  for (const kv::SlotMove& mv : plan.moves)
    if (mv.from < 0 || mv.from >= n_slots || mv.to < 0 || mv.to >= n_slots)
      throw InvalidArgument(
          fmt::format("forward: slot move {} -> {} outside the {} slots", mv.from, mv.to, n_slots));
  if (plan.sink_logits.size() > 1 &&
      static_cast<int64_t>(plan.sink_logits.size()) != config_.n_head)
    throw InvalidArgument(fmt::format("forward: {} virtual sink logits for {} heads",
                                      plan.sink_logits.size(), config_.n_head));
  if (const kv::VirtualSinks* vs = plan.fitted_sinks.get()) {
    // The policy checked the model when the cache was made (Cache, check_shape); a plan
    // from elsewhere is checked here, so that a table of another size is never read past.
    const auto heads = static_cast<size_t>(config_.n_layer * config_.n_head);
    if (!plan.sink_logits.empty())
      throw InvalidArgument("forward: a plan with both virtual sink logits and fitted sinks");
    if (vs->n_layer != config_.n_layer || vs->n_head != config_.n_head ||
        vs->head_dim != config_.head_dim || vs->logits.size() != heads ||
        (vs->has_values() && vs->values.size() != heads * static_cast<size_t>(config_.head_dim)))
      throw InvalidArgument(fmt::format(
          "forward: fitted virtual sinks for {} layers x {} heads x head size {} ({} logits, {} "
          "values); the model has {} x {} x {}",
          vs->n_layer, vs->n_head, vs->head_dim, vs->logits.size(), vs->values.size(),
          config_.n_layer, config_.n_head, config_.head_dim));
  }
  if (g.qpos.capacity() < run_reserve_) {
    g.qpos.reserve(run_reserve_);
    g.q_index.reserve(run_reserve_);
    g.key_runs.reserve(run_reserve_);
    for (auto& trig : g.trig)
      trig.reserve((run_reserve_ + 1) * static_cast<size_t>(config_.head_dim));
  }
  g.q_index.resize(plan.ranges.size());
  g.key_runs.resize(plan.ranges.size());
  g.first_item.resize(static_cast<size_t>(T + 1));
  g.q_first.resize(static_cast<size_t>(T + 1));
  g.qpos.clear();
  g.max_span = 0;
  for (int64_t t = 0; t < T; ++t) {
    const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
    if (tp.write_slot < 0 || tp.write_slot >= n_slots ||
        tp.range_end - tp.range_begin > kMaxRunsPerToken || tp.range_end <= tp.range_begin ||
        tp.range_begin < 0 || tp.range_end > static_cast<int32_t>(plan.ranges.size()))
      throw InvalidArgument(
          fmt::format("forward: bad plan for token {} (slot {}, {} ranges, storage {} slots)",
                      tp.stream_index, tp.write_slot, tp.range_end - tp.range_begin, n_slots));
    const auto first = static_cast<int32_t>(g.qpos.size());
    g.q_first[static_cast<size_t>(t)] = first;
    int64_t span = 0;
    for (int32_t r = tp.range_begin; r < tp.range_end; ++r) {
      const auto ri = static_cast<size_t>(r);
      const kv::SlotRange& sr = plan.ranges[ri];
      if (sr.begin < 0 || sr.end > n_slots || sr.begin >= sr.end)
        throw InvalidArgument(fmt::format("forward: bad slot range [{}, {}) for token {}", sr.begin,
                                          sr.end, tp.stream_index));
      span += sr.end - sr.begin;
      // Ranges of a token usually share one or two query positions; search from the end.
      int32_t idx = -1;
      for (auto i = static_cast<int32_t>(g.qpos.size()) - 1; i >= first; --i)
        if (g.qpos[static_cast<size_t>(i)] == sr.query_pos) {
          idx = i;
          break;
        }
      if (idx < 0) {
        idx = static_cast<int32_t>(g.qpos.size());
        g.qpos.push_back(sr.query_pos);
      }
      g.q_index[ri] = idx;
    }
    g.max_span = std::max(g.max_span, span);
  }
  g.q_first[static_cast<size_t>(T)] = static_cast<int32_t>(g.qpos.size());
  g.split = split_pieces(T, config_.n_head_kv, pool_.size());
  g.n_items = 0;
  for (int64_t t = 0; t < T; ++t) {
    g.first_item[static_cast<size_t>(t)] = g.n_items;
    g.n_items +=
        g.split ? config_.n_head_kv * ops::attention_pieces(plan.span_size(static_cast<size_t>(t)))
                : config_.n_head_kv;
  }
  g.first_item[static_cast<size_t>(T)] = g.n_items;
  g.trig_table[0] = g.trig_table[1] = nullptr;
  if (plan.sink_logits.size() == 1)
    g.sink_logits.assign(static_cast<size_t>(config_.n_head), plan.sink_logits[0]);
  reserve_span(g.max_span);
}

void TransformerForward::point_runs(const Seq& s, const kv::BatchPlan& plan, Group& g) {
  const int64_t qdim = config_.n_head * config_.head_dim;
  for (size_t r = 0; r < plan.ranges.size(); ++r) {
    const kv::SlotRange& sr = plan.ranges[r];
    g.key_runs[r] = {sr.begin, sr.end, qr_.data() + (s.q_base + g.q_index[r]) * qdim};
  }
}

void TransformerForward::begin(std::span<const SequenceStep> steps) {
  if (steps.empty()) throw InvalidArgument("forward: no stream to run");
  seqs_.resize(steps.size());
  int64_t total = 0;
  size_t rotations = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SequenceStep& st = steps[i];
    if (!st.plan || !st.kv || !st.tokens)
      throw InvalidArgument(
          fmt::format("forward: stream {} of the batch lacks its plan, "
                      "storage or tokens",
                      i));
    const kv::StepPlan& plan = *st.plan;
    const kv::KvStorage& kv = *st.kv;
    const int64_t T = plan.n_tokens();
    if (T < 1)
      throw InvalidArgument(fmt::format("forward: stream {} of the batch has no token", i));
    if (static_cast<int64_t>(plan.group_of_layer.size()) != config_.n_layer ||
        kv.n_layer() != config_.n_layer)
      throw InvalidArgument(fmt::format("forward: plan for {} layers, storage {}, model {}",
                                        plan.group_of_layer.size(), kv.n_layer(), config_.n_layer));
    Seq& s = seqs_[i];
    s.step = st;
    s.t0 = total;
    s.T = T;
    total += T;
    if (total > max_batch_)
      throw InvalidArgument(
          fmt::format("forward: batch of {} tokens or more (1..{} allowed)", total, max_batch_));
    s.groups.resize(plan.groups.size());
    size_t seq_rotations = 0;
    for (size_t g = 0; g < plan.groups.size(); ++g) {
      // Every layer of a group has the group's slots; the smallest tells.
      int64_t n_slots = -1;
      for (int64_t l = 0; l < config_.n_layer; ++l) {
        const int32_t gl = plan.group_of_layer[static_cast<size_t>(l)];
        if (gl < 0 || gl >= static_cast<int32_t>(plan.groups.size()))
          throw InvalidArgument(
              fmt::format("forward: layer {} in group {} of {}", l, gl, plan.groups.size()));
        if (static_cast<size_t>(gl) == g)
          n_slots = n_slots < 0 ? kv.n_slots(l) : std::min(n_slots, kv.n_slots(l));
      }
      s.groups[g].q_first.clear();
      if (n_slots < 0) continue;  // a group no layer follows
      prepare_group(s, plan.groups[g], n_slots, s.groups[g]);
      seq_rotations = std::max(seq_rotations, s.groups[g].qpos.size());
    }
    s.q_base = static_cast<int64_t>(rotations);
    rotations += seq_rotations;
  }
  T_ = total;
  // Each stream rotates its queries into its own rows of qr_ (from q_base), so that the
  // streams of a layer can attend in one job.
  const size_t qdim = static_cast<size_t>(config_.n_head * config_.head_dim);
  if (qr_.size() < rotations * qdim) qr_.resize(rotations * qdim);
  for (Seq& s : seqs_) {
    for (size_t g = 0; g < s.groups.size(); ++g)
      if (!s.groups[g].q_first.empty()) point_runs(s, s.step.plan->groups[g], s.groups[g]);
    if (s.step.observer) s.step.observer->on_step(*s.step.plan);
  }
}

void TransformerForward::embed() {
  const int64_t d = config_.n_embd;
  const ops::WeightMatrix& embd = embedding();
  const float scale = embedding_scale();
  for (const Seq& s : seqs_) {
    for (int64_t t = 0; t < s.T; ++t) {
      const TokenId id = s.step.tokens[t];
      if (id < 0 || id >= config_.n_vocab)
        throw InvalidArgument(fmt::format("token id {} out of range [0, {})", id, config_.n_vocab));
      float* row = x_.data() + (s.t0 + t) * d;
      ops::dequantize_weight_row(embd, id, row);
      if (scale != 1.0f)
        for (int64_t i = 0; i < d; ++i) row[i] *= scale;
    }
    if (s.step.observer) s.step.observer->on_hidden(-1, x_.data() + s.t0 * d, s.T, d);
  }
}

void TransformerForward::norm_rows(const float* in, const float* w, float* out, int64_t n) const {
  for (int64_t t = 0; t < T_; ++t) ops::rmsnorm(in + t * n, w, out + t * n, n, config_.rms_eps);
}

void TransformerForward::norm_heads(float* x, const float* w, int64_t heads) const {
  const int64_t hd = config_.head_dim;
  for (int64_t i = 0; i < T_ * heads; ++i)
    ops::rmsnorm(x + i * hd, w, x + i * hd, hd, config_.rms_eps);
}

void TransformerForward::add_residual(const float* y) {
  const int64_t n = T_ * config_.n_embd;
  for (int64_t i = 0; i < n; ++i) x_[static_cast<size_t>(i)] += y[i];
}

void TransformerForward::prefetch_next(std::initializer_list<const ops::WeightMatrix*> ws,
                                       bool interleaved) {
  if (T_ != 1) return;
  ops::prefetch_single_token(ws.begin(), static_cast<int>(ws.size()), interleaved, kPrefetchBytes,
                             pool_);
}

void TransformerForward::prefetch_after_layer(int64_t l) {
  if (l + 1 < config_.n_layer) {
    const auto ws = qkv_matrices(l + 1);
    prefetch_next({ws[0], ws[1], ws[2]});
  } else {
    prefetch_next({&output_matrix()});
  }
}

void TransformerForward::end_layer(int64_t l) {
  for (const Seq& s : seqs_)
    if (s.step.observer)
      s.step.observer->on_hidden(l, x_.data() + s.t0 * config_.n_embd, s.T, config_.n_embd);
}

const float* TransformerForward::trig_for(const Seq& s, Group& g, const kv::BatchPlan& plan,
                                          const RopeTable& rope) {
  int slot = g.trig_table[0] == &rope ? 0 : g.trig_table[1] == &rope ? 1 : -1;
  if (slot >= 0) return g.trig[slot].data();
  slot = g.trig_table[0] == nullptr ? 0 : 1;
  const int64_t nr = rope.n_rot;
  std::vector<float>& trig = g.trig[slot];
  trig.resize(static_cast<size_t>((s.T + static_cast<int64_t>(g.qpos.size())) * nr));
  for (int64_t t = 0; t < s.T; ++t)
    ops::rope_angles(plan.tokens[static_cast<size_t>(t)].key_pos, rope.inv_freq.data(), nr,
                     trig.data() + t * nr);
  for (size_t i = 0; i < g.qpos.size(); ++i)
    ops::rope_angles(g.qpos[i], rope.inv_freq.data(), nr,
                     trig.data() + (s.T + static_cast<int64_t>(i)) * nr);
  g.trig_table[slot] = &rope;
  return trig.data();
}

void TransformerForward::rotate_and_store(int64_t l, const Seq& s, const kv::BatchPlan& plan,
                                          Group& g, const RopeTable& rope) {
  const ModelConfig& c = config_;
  const int64_t hd = c.head_dim, qdim = c.n_head * hd, kvdim = c.n_head_kv * hd;
  const int64_t nr = rope.n_rot;
  kv::KvStorage& kv = *s.step.kv;
  for (const kv::SlotMove& mv : plan.moves) kv.copy_slot(l, mv.from, mv.to);
  const float* trig = trig_for(s, g, plan, rope);
  // Keys rotated once at the plan's key position and stored; queries rotated at each
  // distinct query position their ranges ask for.
  pool_.parallel_for(s.T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
      float* kt = k_.data() + (s.t0 + t) * kvdim;
      ops::rope_apply(kt, c.n_head_kv, hd, nr, trig + t * nr, rope.style);
      kv.store(l, tp.write_slot, kt, v_.data() + (s.t0 + t) * kvdim);
      for (int32_t i = g.q_first[static_cast<size_t>(t)]; i < g.q_first[static_cast<size_t>(t + 1)];
           ++i) {
        float* dst = qr_.data() + (s.q_base + i) * qdim;
        std::memcpy(dst, q_.data() + (s.t0 + t) * qdim, static_cast<size_t>(qdim) * sizeof(float));
        ops::rope_apply(dst, c.n_head, hd, nr, trig + (s.T + i) * nr, rope.style);
      }
    }
  });
}

TransformerForward::Sinks TransformerForward::virtual_sinks(const kv::BatchPlan& plan,
                                                            const Group& g, int64_t l) const {
  if (const kv::VirtualSinks* vs = plan.fitted_sinks.get())
    return {vs->layer_logits(l), vs->layer_values(l)};
  if (plan.sink_logits.empty()) return {};
  if (plan.sink_logits.size() == 1) return {g.sink_logits.data(), nullptr};
  return {plan.sink_logits.data(), nullptr};
}

void TransformerForward::attend(const Seq& s, const kv::BatchPlan& plan, const Group& g,
                                const ops::AttentionShape& shape, const void* kbase,
                                const void* vbase, Sinks sinks) {
  const int64_t nkv = config_.n_head_kv, qdim = config_.n_head * config_.head_dim;
  // A token's sink (logits and values), or none.
  const auto sink_of = [&](int64_t t) {
    return plan.tokens[static_cast<size_t>(t)].virtual_sink ? sinks : Sinks{};
  };
  const int64_t part_floats = ops::attention_part_floats(shape);
  float* out = attn_.data() + s.t0 * qdim;
  const auto token_runs = [&](int64_t t, int& n_runs) {
    const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
    n_runs = tp.range_end - tp.range_begin;
    return g.key_runs.data() + tp.range_begin;
  };
  if (g.split) {
    // Items (token, KV head, piece), pieces of one (token, KV head) consecutive.
    pool_.parallel_for(g.n_items, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t item = i0; item < i1; ++item) {
        int64_t t = 0;
        while (g.first_item[static_cast<size_t>(t + 1)] <= item) ++t;
        const int64_t span = plan.span_size(static_cast<size_t>(t));
        const int64_t local = item - g.first_item[static_cast<size_t>(t)];
        const int64_t n_pieces = ops::attention_pieces(span);
        const int64_t kvh = local / n_pieces, p = local % n_pieces;
        int n_runs = 0;
        const ops::KeyRun* runs = token_runs(t, n_runs);
        ops::attend_piece(shape, kvh, runs, n_runs, p * ops::kAttnPiece,
                          std::min(span, (p + 1) * ops::kAttnPiece), kbase, vbase,
                          attn_parts_.data() + item * part_floats);
      }
    });
    for (int64_t t = 0; t < s.T; ++t) {
      const int64_t n_pieces = ops::attention_pieces(plan.span_size(static_cast<size_t>(t)));
      for (int64_t kvh = 0; kvh < nkv; ++kvh) {
        const int64_t first = g.first_item[static_cast<size_t>(t)] + kvh * n_pieces;
        const Sinks st = sink_of(t);
        ops::attend_merge(shape, kvh, attn_parts_.data() + first * part_floats, n_pieces,
                          out + t * qdim, st.logits, st.values);
      }
    }
  } else {
    // Items (token, KV head), a static share per thread, each with its own partials.
    const int64_t parts_per_thread = ops::attention_pieces(g.max_span) * part_floats;
    pool_.run([&](int ith, int nth) {
      float* parts = attn_parts_.data() + static_cast<size_t>(ith) * parts_per_thread;
      const int64_t i0 = g.n_items * ith / nth, i1 = g.n_items * (ith + 1) / nth;
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t t = item / nkv, kvh = item % nkv;
        int n_runs = 0;
        const ops::KeyRun* runs = token_runs(t, n_runs);
        const Sinks st = sink_of(t);
        ops::attend_group(shape, kvh, runs, n_runs, kbase, vbase, out + t * qdim, parts, nullptr,
                          st.logits, st.values);
      }
    });
  }
}

void TransformerForward::apply_edit(const Seq& s, const AttentionEdit& edit,
                                    const kv::BatchPlan& plan, const Group& g,
                                    const ops::AttentionShape& shape, const void* kbase,
                                    const void* vbase, Sinks sinks) {
  const int64_t nh = config_.n_head, nkv = config_.n_head_kv, hd = config_.head_dim;
  const int64_t G = nh / nkv;
  if (edit.sinks.empty()) return;
  if (static_cast<int64_t>(edit.sinks.size()) != nh)
    throw InvalidArgument(
        fmt::format("attention edit for {} heads; the model has {}", edit.sinks.size(), nh));
  bool any_logit = false;
  split_modes_.assign(static_cast<size_t>(nh), ops::SinkSplit::kNone);
  for (int64_t h = 0; h < nh; ++h) {
    switch (edit.sinks[h]) {
      case SinkEdit::kNone:
      case SinkEdit::kDrop:
        break;
      case SinkEdit::kKeys:
        split_modes_[h] = ops::SinkSplit::kKeys;
        break;
      case SinkEdit::kValues:
        split_modes_[h] = ops::SinkSplit::kValues;
        break;
      case SinkEdit::kLogit:
        split_modes_[h] = ops::SinkSplit::kLogit;
        any_logit = true;
        break;
      default:
        throw InvalidArgument(fmt::format("attention edit: unknown sink edit {} for head {}",
                                          static_cast<int>(edit.sinks[h]), h));
    }
  }
  if (any_logit && static_cast<int64_t>(edit.sink_logit.size()) != nh)
    throw InvalidArgument(
        fmt::format("attention edit: {} sink logits for {} heads", edit.sink_logit.size(), nh));
  for (int64_t kvh = 0; kvh < nkv; ++kvh) {
    bool drop = false, split = false;
    for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
      drop |= edit.sinks[h] == SinkEdit::kDrop;
      split |= edit.sinks[h] > SinkEdit::kDrop;
    }
    if (!drop && !split) continue;
    for (int64_t t = 0; t < s.T; ++t) {
      const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
      std::vector<ops::KeyRun>& kept = kept_runs_;
      std::vector<ops::KeyRun>& sink_runs = sink_runs_;
      kept.clear();
      sink_runs.clear();
      for (int32_t r = tp.range_begin; r < tp.range_end; ++r)
        (plan.ranges[static_cast<size_t>(r)].sink ? sink_runs : kept)
            .push_back(g.key_runs[static_cast<size_t>(r)]);
      const int n_kept = static_cast<int>(kept.size());
      if (sink_runs.empty()) continue;  // no sink run for this token
      if (n_kept == 0) continue;        // nothing would remain: leave the head as it is
      float* dst = attn_.data() + (s.t0 + t) * nh * hd;
      const Sinks st = tp.virtual_sink ? sinks : Sinks{};
      if (drop) {
        // The group is attended again over the runs it keeps, with the same kernel, and the
        // dropped heads take their rows from that result.
        int64_t span = 0;
        for (int i = 0; i < n_kept; ++i) span += kept[i].end - kept[i].begin;
        const size_t need =
            static_cast<size_t>(ops::attention_pieces(span) * ops::attention_part_floats(shape));
        if (attn_parts_.size() < need) attn_parts_.resize(need);
        // attend_group writes the group's rows of a [n_head][hd] row.
        std::vector<float>& row = edit_out_;
        ops::attend_group(shape, kvh, kept.data(), n_kept, kbase, vbase, row.data(),
                          attn_parts_.data(), nullptr, st.logits, st.values);
        for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h)
          if (edit.sinks[h] == SinkEdit::kDrop)
            std::memcpy(dst + h * hd, row.data() + h * hd, static_cast<size_t>(hd) * sizeof(float));
      }
      if (!split) continue;
      // The other edits recombine the sinks' and the window's sums, which a virtual sink
      // would join as a third part; no policy makes both, so that case is refused.
      if (st.logits)
        throw InvalidArgument(fmt::format(
            "attention edit: token {} has sink ranges and a virtual sink; only dropping the "
            "sinks is defined then",
            tp.stream_index));
      int64_t nw = 0, ns = 0;
      for (const ops::KeyRun& r : kept) nw += r.end - r.begin;
      for (const ops::KeyRun& r : sink_runs) ns += r.end - r.begin;
      const size_t need =
          static_cast<size_t>((ops::attention_pieces(nw) + ops::attention_pieces(ns)) *
                              ops::attention_part_floats(shape));
      if (attn_parts_.size() < need) attn_parts_.resize(need);
      ops::attend_split(shape, kvh, kept.data(), n_kept, sink_runs.data(),
                        static_cast<int>(sink_runs.size()), kbase, vbase, split_modes_.data(),
                        edit.sink_logit.empty() ? nullptr : edit.sink_logit.data(), dst,
                        attn_parts_.data());
    }
  }
}

void TransformerForward::record(int64_t l, const Seq& s, const kv::BatchPlan& plan, const Group& g,
                                const ops::AttentionShape& shape, const void* kbase) {
  const ModelConfig& c = config_;
  AttentionObserver& obs = *s.step.observer;
  const int64_t kvdim = c.n_head_kv * c.head_dim;
  AttentionRecord rec;
  rec.layer = l;
  rec.plan = &plan;
  rec.n_tokens = s.T;
  rec.n_head = c.n_head;
  rec.n_head_kv = c.n_head_kv;
  rec.head_dim = c.head_dim;
  rec.k_rows = k_raw_.data();
  rec.v_rows = v_.data() + s.t0 * kvdim;
  if (obs.wants_probs(l)) {
    const int64_t G = c.n_head / c.n_head_kv;
    int64_t total = 0;
    if (prob_offset_.size() < static_cast<size_t>(s.T + 1))
      prob_offset_.resize(static_cast<size_t>(s.T + 1));
    for (int64_t t = 0; t < s.T; ++t) {
      prob_offset_[static_cast<size_t>(t)] = total;
      total += c.n_head * plan.span_size(static_cast<size_t>(t));
    }
    prob_offset_[static_cast<size_t>(s.T)] = total;
    if (probs_.size() < static_cast<size_t>(total)) probs_.resize(static_cast<size_t>(total));
    if (lse_.size() < static_cast<size_t>(s.T * c.n_head))
      lse_.resize(static_cast<size_t>(s.T * c.n_head));
    pool_.parallel_for(s.T * c.n_head_kv, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = i / c.n_head_kv, kvh = i % c.n_head_kv;
        const kv::TokenPlan& tp = plan.tokens[static_cast<size_t>(t)];
        const int64_t span = plan.span_size(static_cast<size_t>(t));
        ops::attention_probs(shape, kvh, g.key_runs.data() + tp.range_begin,
                             tp.range_end - tp.range_begin, kbase,
                             probs_.data() + prob_offset_[static_cast<size_t>(t)] + kvh * G * span,
                             lse_.data() + t * c.n_head + kvh * G);
      }
    });
    rec.probs = probs_.data();
    rec.prob_offset = prob_offset_.data();
    rec.lse = lse_.data();
  }
  obs.on_attention(rec);
}

bool TransformerForward::attend_streams(int64_t l, const RopeTable& rope) {
  const ModelConfig& c = config_;
  const int nth = pool_.size();
  if (seqs_.size() < 2 || nth < 2) return false;
  int64_t n_items = 0;
  for (const Seq& s : seqs_) {
    if (s.step.observer) return false;
    n_items += s.T * c.n_head_kv;
  }
  // Fewer items than that leave threads idle unless tokens are split into pieces, which
  // attend() does stream by stream.
  if (n_items < 4 * int64_t{nth}) return false;
  stream_attn_.clear();
  attn_items_.clear();
  attn_cost_.assign(1, 0);
  for (Seq& s : seqs_) {
    const int32_t gi = s.step.plan->group_of_layer[static_cast<size_t>(l)];
    const kv::BatchPlan& plan = s.step.plan->groups[static_cast<size_t>(gi)];
    Group& g = s.groups[static_cast<size_t>(gi)];
    kv::KvStorage& kv = *s.step.kv;
    rotate_and_store(l, s, plan, g, rope);
    const ops::AttentionShape shape{c.n_head,  c.n_head_kv, c.head_dim, kv.n_slots(l) * c.head_dim,
                                    kv.type(), attn_scale_};
    const auto stream = static_cast<int32_t>(stream_attn_.size());
    stream_attn_.push_back(
        {&s, &plan, &g, shape, kv.k(l, 0), kv.v(l, 0), virtual_sinks(plan, g, l)});
    for (int64_t t = 0; t < s.T; ++t) {
      const int64_t span = plan.span_size(static_cast<size_t>(t));
      for (int64_t kvh = 0; kvh < c.n_head_kv; ++kvh) {
        attn_items_.push_back({stream, static_cast<int32_t>(t), static_cast<int32_t>(kvh)});
        attn_cost_.push_back(attn_cost_.back() + span);
      }
    }
  }
  // One job: thread i takes the items whose spans start in the i-th share of all the
  // spans, each whole (its pieces and their merge, as attend() computes them), with its own
  // scratch (reserve_span made room for 4 threads' worth of the longest span).
  const int64_t qdim = c.n_head * c.head_dim;
  int64_t max_span = 1;
  for (const StreamAttention& sa : stream_attn_) max_span = std::max(max_span, sa.group->max_span);
  const int64_t scratch =
      ops::attention_pieces(max_span) * ops::attention_part_floats(stream_attn_.front().shape);
  const int64_t total = attn_cost_.back();
  pool_.run([&](int ith, int nth_run) {
    float* parts = attn_parts_.data() + static_cast<size_t>(ith) * static_cast<size_t>(scratch);
    const auto first_at = [&](int64_t cost) {
      return std::lower_bound(attn_cost_.begin(), attn_cost_.end() - 1, cost) - attn_cost_.begin();
    };
    const int64_t i0 = first_at(total * ith / nth_run), i1 = first_at(total * (ith + 1) / nth_run);
    for (int64_t i = i0; i < i1; ++i) {
      const AttentionItem& it = attn_items_[static_cast<size_t>(i)];
      const StreamAttention& sa = stream_attn_[static_cast<size_t>(it.stream)];
      const kv::TokenPlan& tp = sa.plan->tokens[static_cast<size_t>(it.token)];
      const Sinks st = tp.virtual_sink ? sa.sinks : Sinks{};
      ops::attend_group(sa.shape, it.kv_head, sa.group->key_runs.data() + tp.range_begin,
                        tp.range_end - tp.range_begin, sa.kbase, sa.vbase,
                        attn_.data() + (sa.seq->t0 + it.token) * qdim, parts, nullptr, st.logits,
                        st.values);
    }
  });
  return true;
}

void TransformerForward::attention(int64_t l, const RopeTable& rope) {
  if (attend_streams(l, rope)) return;
  const int64_t kvdim = config_.n_head_kv * config_.head_dim;
  for (Seq& s : seqs_) {
    const int32_t gi = s.step.plan->group_of_layer[static_cast<size_t>(l)];
    const kv::BatchPlan& plan = s.step.plan->groups[static_cast<size_t>(gi)];
    Group& g = s.groups[static_cast<size_t>(gi)];
    kv::KvStorage& kv = *s.step.kv;
    AttentionObserver* obs = s.step.observer;
    if (obs) k_raw_.assign(k_.begin() + s.t0 * kvdim, k_.begin() + (s.t0 + s.T) * kvdim);
    rotate_and_store(l, s, plan, g, rope);
    const ops::AttentionShape shape{config_.n_head,   config_.n_head_kv,
                                    config_.head_dim, kv.n_slots(l) * config_.head_dim,
                                    kv.type(),        attn_scale_};
    const void* kbase = kv.k(l, 0);
    const void* vbase = kv.v(l, 0);
    const Sinks sinks = virtual_sinks(plan, g, l);
    attend(s, plan, g, shape, kbase, vbase, sinks);
    if (obs) {
      if (const AttentionEdit* e = obs->edit(l))
        apply_edit(s, *e, plan, g, shape, kbase, vbase, sinks);
      record(l, s, plan, g, shape, kbase);
    }
  }
}

const float* TransformerForward::logits() {
  const ModelConfig& c = config_;
  const int64_t d = c.n_embd;
  // The rows asked for, normed and gathered in step order.
  int64_t rows = 0;
  for (const Seq& s : seqs_) {
    const Logits which = s.step.logits;
    if (which == Logits::kNone) continue;
    for (int64_t t = which == Logits::kAll ? 0 : s.T - 1; t < s.T; ++t, ++rows)
      ops::rmsnorm(x_.data() + (s.t0 + t) * d, output_norm(), xn_.data() + rows * d, d, c.rms_eps);
  }
  if (rows == 0) return nullptr;
  if (logits_.size() < static_cast<size_t>(rows * c.n_vocab))
    logits_.resize(static_cast<size_t>(rows * c.n_vocab));
  act_.set(xn_.data(), rows, d);
  ops::matmul(output_matrix(), act_, logits_.data(), c.n_vocab, pool_);
  const auto first = qkv_matrices(0);
  prefetch_next({first[0], first[1], first[2]});
  if (const float cap = logit_softcap(); cap > 0) {
    for (int64_t i = 0; i < rows * c.n_vocab; ++i) {
      float& z = logits_[static_cast<size_t>(i)];
      z = cap * std::tanh(z / cap);
    }
  }
  return logits_.data();
}

const float* TransformerForward::run_batch(std::span<const SequenceStep> steps) {
  begin(steps);
  embed();
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    layer(l);
    end_layer(l);
  }
  return logits();
}

const float* TransformerForward::run(const TokenId* tokens, const kv::StepPlan& plan,
                                     kv::KvStorage& kv, Logits which) {
  const SequenceStep one{tokens, &plan, &kv, which, observer_};
  return run_batch(std::span(&one, 1));
}

}  // namespace spillway::model::detail
