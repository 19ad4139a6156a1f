// The parts of a forward pass that decoder-only transformers share, for architectures to
// compose (private to model/): checking a step's plan against the storage and scheduling
// its attention, embedding lookup, RMSNorm over rows, RoPE + K/V store + attention over a
// plan (with the observer's hooks), the residual add and the output head. Also the
// binding helpers every architecture's loader uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spillway/gguf/gguf.h"
#include "spillway/model/model.h"
#include "spillway/model/observer.h"
#include "spillway/ops/attention.h"
#include "spillway/ops/matmul.h"
#include "spillway/ops/ops.h"

namespace spillway::model::detail {

// --- loading -------------------------------------------------------------------------------

// The hyperparameters of ModelConfig from `<arch>.*` keys, checked (FormatError naming the
// key for a missing or inconsistent one). layers[] are all global; head_dim comes from
// attention.key_length when present (value_length must then equal it), else n_embd/n_head.
ModelConfig read_common_config(const gguf::GgufFile& file);

// A 2-D weight [cols, rows] (GGUF order) bound in place; FormatError for another shape.
ops::WeightMatrix bind_matrix(const gguf::GgufFile& f, const std::string& name, int64_t cols,
                              int64_t rows);
// A 1-D F32 weight of n elements bound in place.
const float* bind_vector(const gguf::GgufFile& f, const std::string& name, int64_t n);

// RoPE of one layer: which pairs rotate and at what frequencies.
struct RopeTable {
  ops::RopeStyle style = ops::RopeStyle::kAdjacent;
  int64_t n_rot = 0;
  std::vector<double> inv_freq;  // [n_rot / 2]: freq_scale * base^(-2i/n_rot) / factor_i
};
RopeTable make_rope(ops::RopeStyle style, int64_t n_rot, double base, double freq_scale,
                    const float* factors = nullptr);

// Bytes one decoded token reads from a matrix.
inline uint64_t matrix_bytes(const ops::WeightMatrix& w) {
  return w.row_bytes * static_cast<uint64_t>(w.rows);
}

// --- the forward pass ------------------------------------------------------------------------

// Buffers and steps shared by the architectures' forward passes. An architecture's run()
// calls begin(), embed(), then per layer its own projections around attention() and
// end_layer(), then logits().
class TransformerForward : public Forward {
 public:
  // attn_scale multiplies the query-key dot products (usually 1/sqrt(head_dim)).
  TransformerForward(const ModelConfig& config, ThreadPool& pool, int64_t max_batch,
                     float attn_scale);

  int64_t max_batch() const override { return max_batch_; }
  void reserve_span(int64_t max_span) override;
  void set_observer(AttentionObserver* observer) override { observer_ = observer; }

 protected:
  // Checks the step's plans against the batch size and the storage, and prepares the key
  // runs and attention work items of every layer group. Returns T, the step's token count.
  int64_t begin(const kv::StepPlan& plan, const kv::KvStorage& kv);
  // x_[t] = scale * embedding row of tokens[t] (InvalidArgument for an id out of range).
  void embed(const TokenId* tokens, const ops::WeightMatrix& embd, float scale);
  // out[t] = RMSNorm(in[t]) * w for the step's T rows of n floats (rows contiguous).
  void norm_rows(const float* in, const float* w, float* out, int64_t n) const;
  // The same over every head_dim-long piece of each row: per-head norms (QK-norm);
  // in place, `heads` pieces per row.
  void norm_heads(float* x, const float* w, int64_t heads) const;
  // Attention of layer l: rotates k_ (stored at the plan's slots with v_) and q_ with
  // `rope`, attends over the layer's plan into attn_ ([T][n_head * head_dim]).
  void attention(int64_t l, const RopeTable& rope, kv::KvStorage& kv);
  // x_ += y over the step's T rows of n_embd.
  void add_residual(const float* y);
  // Reports x_ as the output of layer l to the observer, if any.
  void end_layer(int64_t l);
  // Final norm and output matrix over the last row (kLast) or all rows (kAll); with
  // softcap > 0 each logit z becomes softcap * tanh(z / softcap).
  const float* logits(Logits which, const float* output_norm, const ops::WeightMatrix& output,
                      float softcap = 0.0f);

  const ModelConfig& config_;
  ThreadPool& pool_;
  const int64_t max_batch_;
  const float attn_scale_;
  AttentionObserver* observer_ = nullptr;
  int64_t T_ = 0;  // tokens of the current step
  const kv::StepPlan* plan_ = nullptr;

  ops::Activations act_;
  std::vector<float> x_;     // [max_batch][n_embd] residual stream
  std::vector<float> xn_;    // [max_batch][n_embd] normed / block outputs
  std::vector<float> q_;     // [max_batch][n_head*hd] queries before rotation
  std::vector<float> k_;     // [max_batch][n_head_kv*hd]
  std::vector<float> v_;     // [max_batch][n_head_kv*hd]
  std::vector<float> attn_;  // [max_batch][n_head*hd]
  std::vector<float> gate_;  // [max_batch][n_ff]
  std::vector<float> up_;    // [max_batch][n_ff]

 private:
  // What begin() prepares for one layer group's plan.
  struct Group {
    std::vector<int32_t> q_index;       // per plan range: its query rotation in qpos
    std::vector<int64_t> qpos;          // the distinct query positions of each token, in
                                        // token order (token t's from q_first[t])
    std::vector<int32_t> q_first;       // [T + 1]
    std::vector<ops::KeyRun> key_runs;  // per plan range: its slots and rotated query
    std::vector<int64_t> first_item;    // [T + 1] first attention item of each token
    int64_t n_items = 0;
    int64_t max_span = 0;
    bool split = false;  // one token's pieces spread over threads (decode)
    // Cosines and sines of the step's key positions (T) then query positions (qpos), per
    // RoPE table in use: [T + qpos.size()][n_rot]; filled on first use in the step.
    const RopeTable* trig_table[2] = {nullptr, nullptr};
    std::vector<float> trig[2];
  };
  void prepare_group(const kv::BatchPlan& plan, int64_t n_slots, Group& g);
  void point_runs(const kv::BatchPlan& plan, Group& g);
  const float* trig_for(Group& g, const kv::BatchPlan& plan, const RopeTable& rope);
  void rotate_and_store(int64_t l, const kv::BatchPlan& plan, Group& g, const RopeTable& rope,
                        kv::KvStorage& kv);
  void attend(const kv::BatchPlan& plan, const Group& g, const ops::AttentionShape& shape,
              const void* kbase, const void* vbase, const float* sink_logits);
  void apply_edit(const AttentionEdit& edit, const kv::BatchPlan& plan, const Group& g,
                  const ops::AttentionShape& shape, const void* kbase, const void* vbase,
                  const float* sink_logits);
  void record(int64_t l, const kv::BatchPlan& plan, const Group& g,
              const ops::AttentionShape& shape, const void* kbase);
  // The plan's virtual sink logits as [n_head] (nullptr for none).
  const float* sink_logits(const kv::BatchPlan& plan);

  std::vector<Group> groups_;
  int64_t span_reserved_ = 0;         // reserve_span's largest span so far (max_batch 1)
  size_t run_reserve_ = 0;            // runs per group reserved for one-token steps
  std::vector<float> qr_;             // [max_batch][2][n_head*hd] queries per query position
  std::vector<float> logits_;         // [rows][n_vocab], grown to the most rows asked for
  std::vector<float> attn_parts_;     // [items][attention_part_floats]
  std::vector<float> probs_;          // observer records: probabilities of the step's tokens
  std::vector<int64_t> prob_offset_;  // [T + 1]
  std::vector<double> lse_;           // [T][n_head] observer records: log-sum-exp
  std::vector<float> sinks_;          // [n_head] a plan's virtual sink logits, broadcast
  std::vector<float> k_raw_;          // [T][n_head_kv*hd] keys before RoPE (only with an observer)
  std::vector<float> edit_out_;       // [n_head][head_dim] an edited group's attention output
  std::vector<ops::KeyRun> kept_runs_;  // an edited token's runs without the sink ranges
};

}  // namespace spillway::model::detail
