// The parts of a forward pass that decoder-only transformers share, for architectures to
// compose (private to model/): checking a step's plan against the storage and scheduling
// its attention, embedding lookup, RMSNorm over rows, RoPE + K/V store + attention over a
// plan (with the observer's hooks), the residual add and the output head. Also the loading
// side: the binding helpers, and BlockModel, which binds, interleaves, counts and finds an
// architecture's tensors from one table per architecture.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/core/huge_pages.h"
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
// Private copies of a model's weight matrices in the kernels' interleaved layout
// (ops::WeightLayout::kRows8), which a matrix-vector product reads front to back: on a
// Zen 4 host, single-token decoding ran faster with it than with the file's rows
// (docs/performance-history.md, a4868e6). Matrices of the types ops::can_interleave()
// accepts are copied and repointed; the others stay bound in place. The copied ranges of
// the file's mapping are released, so resident memory stays at about the weights' size.
class InterleavedWeights {
 public:
  // Rewrites *m for each m in ms; entries bound to the same bytes (a tied output matrix
  // and the token embedding) share one copy.
  void interleave(const gguf::GgufFile& f, const std::vector<ops::WeightMatrix*>& ms);

 private:
  // Fewer page faults while copying, fewer TLB misses while decoding.
  HugePageBuffer buf_;
};

// A 1-D F32 weight of n elements bound in place.
const float* bind_vector(const gguf::GgufFile& f, const std::string& name, int64_t n);

// The RoPE keys architectures share: rope.dimension_count (default head_dim; must be even
// and at most head_dim) and rope.scaling.type / rope.scaling.factor (none, or linear:
// freq_scale = 1 / factor). FormatError naming the key for a bad value, UnsupportedError
// for another scaling type.
struct RopeKeys {
  int64_t n_rot = 0;
  double freq_scale = 1.0;
};
RopeKeys read_rope_keys(const gguf::GgufFile& file, const ModelConfig& common);

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

// --- an architecture's tensors -------------------------------------------------------------

// Sizes of an architecture's tensors, from its configuration.
using DimFn = int64_t (*)(const ModelConfig&);
namespace dims {
inline int64_t embd(const ModelConfig& c) {
  return c.n_embd;
}
inline int64_t head(const ModelConfig& c) {
  return c.head_dim;
}
inline int64_t q(const ModelConfig& c) {
  return c.n_head * c.head_dim;
}
inline int64_t kv(const ModelConfig& c) {
  return c.n_head_kv * c.head_dim;
}
inline int64_t ff(const ModelConfig& c) {
  return c.n_ff;
}
}  // namespace dims

// One tensor of every block of an architecture, as its table lists it: the GGUF name after
// "blk.N.", the size from the configuration, and the member of the architecture's layer
// struct it binds to. A matrix (rows x cols, GGUF shape [cols, rows]) is quantized, read
// once per decoded token and copied into the interleaved layout where its type allows; a
// vector (a norm's weights, [cols] F32) is bound in place. The table drives binding,
// interleaving, the bytes a token reads and the lookup by name (BlockModel).
template <class Layer>
struct LayerTensor {
  const char* name;
  DimFn cols;
  DimFn rows = nullptr;  // nullptr: a vector
  ops::WeightMatrix Layer::*matrix = nullptr;
  const float* Layer::*vector = nullptr;
};

template <class Layer>
constexpr LayerTensor<Layer> matrix_tensor(const char* name, DimFn cols, DimFn rows,
                                           ops::WeightMatrix Layer::*m) {
  return {name, cols, rows, m, nullptr};
}
template <class Layer>
constexpr LayerTensor<Layer> vector_tensor(const char* name, DimFn n, const float* Layer::*v) {
  return {name, n, nullptr, nullptr, v};
}

// A model made of the embedding, blocks whose tensors a table lists (one Layer each), and
// the output norm and matrix. The architecture reads its configuration, then calls
// bind_tensors(); everything about its tensors follows from the table.
template <class Layer>
class BlockModel : public Model {
 public:
  const Layer& layer(int64_t i) const { return layers_[static_cast<size_t>(i)]; }
  const ops::WeightMatrix& token_embd() const { return token_embd_; }
  const ops::WeightMatrix& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }

  // Every matrix and vector once (the output matrix's bytes, tied or not), one row of the
  // embedding.
  uint64_t weight_bytes_per_token() const override {
    const ModelConfig& c = config_;
    uint64_t total = matrix_bytes(output_) + token_embd_.row_bytes +
                     4 * static_cast<uint64_t>(c.n_embd);  // output norm
    for (const Layer& L : layers_) {
      for (const LayerTensor<Layer>& t : table_) {
        total += t.matrix ? matrix_bytes(L.*t.matrix) : 4 * static_cast<uint64_t>(t.cols(c));
      }
    }
    return total;
  }

  const ops::WeightMatrix* find_matrix(std::string_view name) const override {
    if (name == "token_embd.weight") return &token_embd_;
    if (name == "output.weight") return &output_;
    const LayerTensor<Layer>* t = nullptr;
    const Layer* L = block_tensor(name, &t);
    return L && t->matrix ? &(L->*t->matrix) : nullptr;
  }

  const float* find_vector(std::string_view name) const override {
    if (name == "output_norm.weight") return output_norm_;
    const LayerTensor<Layer>* t = nullptr;
    const Layer* L = block_tensor(name, &t);
    return L && t->vector ? L->*t->vector : nullptr;
  }

 protected:
  BlockModel(std::unique_ptr<gguf::GgufFile> file, std::span<const LayerTensor<Layer>> table)
      : Model(std::move(file)), table_(table) {}

  // Binds the embedding, the output matrix (the embedding when tied), the output norm and
  // every block's tensors (shapes checked: FormatError naming the tensor), then copies the
  // matrices into the interleaved layout.
  void bind_tensors() {
    const gguf::GgufFile& f = *file_;
    const ModelConfig& c = config_;
    token_embd_ = bind_matrix(f, "token_embd.weight", c.n_embd, c.n_vocab);
    output_ = c.tied_output ? token_embd_ : bind_matrix(f, "output.weight", c.n_embd, c.n_vocab);
    output_norm_ = bind_vector(f, "output_norm.weight", c.n_embd);
    layers_.resize(static_cast<size_t>(c.n_layer));
    std::vector<ops::WeightMatrix*> matrices = {&token_embd_, &output_};
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string b = "blk." + std::to_string(i) + ".";
      Layer& L = layers_[static_cast<size_t>(i)];
      for (const LayerTensor<Layer>& t : table_) {
        if (t.matrix) {
          L.*t.matrix = bind_matrix(f, b + t.name, t.cols(c), t.rows(c));
          matrices.push_back(&(L.*t.matrix));
        } else {
          L.*t.vector = bind_vector(f, b + t.name, t.cols(c));
        }
      }
    }
    interleaved_.interleave(f, matrices);
  }

  std::vector<Layer> layers_;
  ops::WeightMatrix token_embd_, output_;
  const float* output_norm_ = nullptr;

 private:
  // "blk.N.<name>" -> block N and its table entry; nullptr when there is none.
  const Layer* block_tensor(std::string_view name, const LayerTensor<Layer>** t) const {
    if (name.substr(0, 4) != "blk.") return nullptr;
    const size_t dot = name.find('.', 4);
    if (dot == std::string_view::npos || dot == 4) return nullptr;
    int64_t n = 0;
    for (char ch : name.substr(4, dot - 4)) {
      if (ch < '0' || ch > '9' || n > config_.n_layer) return nullptr;
      n = 10 * n + (ch - '0');
    }
    if (n >= config_.n_layer) return nullptr;
    for (const LayerTensor<Layer>& e : table_) {
      if (name.substr(dot + 1) == e.name) {
        *t = &e;
        return &layers_[static_cast<size_t>(n)];
      }
    }
    return nullptr;
  }

  std::span<const LayerTensor<Layer>> table_;
  InterleavedWeights interleaved_;  // the matrices' interleaved copies
};

// --- the forward pass ------------------------------------------------------------------------

// Buffers and steps shared by the architectures' forward passes. run()/run_batch() check
// the steps, embed the tokens, call the architecture's layer() for every layer, and
// compute the logits; layer(l) works on the rows of every stream at once with the shared
// steps below (its own projections around attention()).
class TransformerForward : public Forward {
 public:
  // attn_scale multiplies the query-key dot products (usually 1/sqrt(head_dim)).
  TransformerForward(const ModelConfig& config, ThreadPool& pool, int64_t max_batch,
                     float attn_scale);

  const float* run(const TokenId* tokens, const kv::StepPlan& plan, kv::KvStorage& kv,
                   Logits which) override;
  const float* run_batch(std::span<const SequenceStep> steps) override;
  int64_t max_batch() const override { return max_batch_; }
  void reserve_span(int64_t max_span) override;
  void set_observer(AttentionObserver* observer) override { observer_ = observer; }

 protected:
  // What an architecture supplies.
  virtual void layer(int64_t l) = 0;                       // one block over rows [0, T_)
  virtual const ops::WeightMatrix& embedding() const = 0;  // token embedding
  virtual float embedding_scale() const { return 1.0f; }
  virtual const float* output_norm() const = 0;  // [n_embd]
  virtual const ops::WeightMatrix& output_matrix() const = 0;
  virtual float logit_softcap() const { return 0.0f; }  // > 0: z -> c tanh(z / c)
  // The matrices of layer l's first product, Q, K and V (the next layer's are prefetched
  // during the serial steps at the end of a layer, layer 0's after the output product).
  virtual std::array<const ops::WeightMatrix*, 3> qkv_matrices(int64_t l) const = 0;

  // out[t] = RMSNorm(in[t]) * w for the step's T_ rows of n floats (rows contiguous).
  void norm_rows(const float* in, const float* w, float* out, int64_t n) const;
  // The same over every head_dim-long piece of each row: per-head norms (QK-norm);
  // in place, `heads` pieces per row.
  void norm_heads(float* x, const float* w, int64_t heads) const;
  // Attention of layer l for every stream: rotates k_ (stored at the plan's slots with v_)
  // and q_ with `rope`, attends over the stream's plan into attn_ ([T_][n_head*head_dim]).
  void attention(int64_t l, const RopeTable& rope);
  // x_ += y over the T_ rows of n_embd.
  void add_residual(const float* y);
  // A step of one token: the pool's idle workers prefetch their shares of the next
  // product's matrices (the rows each will take first, up to kPrefetchBytes) while this
  // thread runs the serial steps before it (ops::prefetch_single_token; `interleaved`:
  // the two matrices of matmul_swiglu). A hint only: results do not change.
  void prefetch_next(std::initializer_list<const ops::WeightMatrix*> ws, bool interleaved = false);
  // After layer l: the next layer's Q, K and V, or after the last one the output matrix.
  void prefetch_after_layer(int64_t l);
  static constexpr size_t kPrefetchBytes = size_t{256} << 10;

  const ModelConfig& config_;
  ThreadPool& pool_;
  const int64_t max_batch_;
  const float attn_scale_;
  int64_t T_ = 0;  // tokens of the current pass, all streams

  ops::Activations act_;
  std::vector<float> x_;     // [max_batch][n_embd] residual stream
  std::vector<float> xn_;    // [max_batch][max(n_embd, n_head*hd)] normed / block outputs
  std::vector<float> q_;     // [max_batch][n_head*hd] queries before rotation
  std::vector<float> k_;     // [max_batch][n_head_kv*hd]
  std::vector<float> v_;     // [max_batch][n_head_kv*hd]
  std::vector<float> attn_;  // [max_batch][n_head*hd]
  std::vector<float> gate_;  // [max_batch][n_ff]
  std::vector<float> up_;    // [max_batch][n_ff]

 private:
  // What begin() prepares for one layer group's plan of one stream.
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
    std::vector<float> sink_logits;  // [n_head] the plan's single sink logit, broadcast
  };
  // One stream of the pass: its rows [t0, t0 + T) of the buffers.
  struct Seq {
    SequenceStep step;
    int64_t t0 = 0, T = 0;
    int64_t q_base = 0;  // its first query rotation in qr_ (streams rotate into their own rows)
    std::vector<Group> groups;  // per layer group of its plan
  };

  void begin(std::span<const SequenceStep> steps);
  void prepare_group(const Seq& s, const kv::BatchPlan& plan, int64_t n_slots, Group& g);
  void point_runs(const Seq& s, const kv::BatchPlan& plan, Group& g);
  void embed();
  void end_layer(int64_t l);
  const float* logits();
  const float* trig_for(const Seq& s, Group& g, const kv::BatchPlan& plan, const RopeTable& rope);
  void rotate_and_store(int64_t l, const Seq& s, const kv::BatchPlan& plan, Group& g,
                        const RopeTable& rope);
  // A layer's virtual sinks: logits [n_head] (nullptr: none) and values [n_head][head_dim]
  // (nullptr: value-less).
  struct Sinks {
    const float* logits = nullptr;
    const float* values = nullptr;
  };
  void attend(const Seq& s, const kv::BatchPlan& plan, const Group& g,
              const ops::AttentionShape& shape, const void* kbase, const void* vbase, Sinks sinks);
  // Layer l's attention for every stream of the pass in one job, when several streams
  // without observers bring enough (token, KV head) items to share the threads: false
  // (nothing done) otherwise. The same items and kernel as attend(), so the same bits.
  bool attend_streams(int64_t l, const RopeTable& rope);
  void apply_edit(const Seq& s, const AttentionEdit& edit, const kv::BatchPlan& plan,
                  const Group& g, const ops::AttentionShape& shape, const void* kbase,
                  const void* vbase, Sinks sinks);
  void record(int64_t l, const Seq& s, const kv::BatchPlan& plan, const Group& g,
              const ops::AttentionShape& shape, const void* kbase);
  // The plan's virtual sinks of layer l (logits as [n_head]; a single logit broadcast in
  // the stream's group, so that streams never share the row).
  Sinks virtual_sinks(const kv::BatchPlan& plan, const Group& g, int64_t l) const;

  AttentionObserver* observer_ = nullptr;  // of run()
  std::vector<Seq> seqs_;
  int64_t span_reserved_ = 0;  // reserve_span's largest span so far (max_batch 1)
  size_t run_reserve_ = 0;     // runs per group reserved for one-token steps
  std::vector<float> qr_;      // [query rotations][n_head*hd]: each stream's (the most
                               // of any of its groups) from its q_base
  // attend_streams: per stream its layer's plan, group, shape, K/V bases and sinks, and
  // the (stream, token, KV head) items with their spans' running sum.
  struct StreamAttention {
    const Seq* seq;
    const kv::BatchPlan* plan;
    const Group* group;
    ops::AttentionShape shape;
    const void* kbase;
    const void* vbase;
    Sinks sinks;
  };
  struct AttentionItem {
    int32_t stream, token, kv_head;
  };
  std::vector<StreamAttention> stream_attn_;
  std::vector<AttentionItem> attn_items_;
  std::vector<int64_t> attn_cost_;    // [items + 1] running sum of the items' spans
  std::vector<float> logits_;         // [rows][n_vocab], grown to the most rows asked for
  std::vector<float> attn_parts_;     // [items][attention_part_floats]
  std::vector<float> probs_;          // observer records: probabilities of the step's tokens
  std::vector<int64_t> prob_offset_;  // [T + 1]
  std::vector<double> lse_;           // [T][n_head] observer records: log-sum-exp
  std::vector<float> k_raw_;          // [T][n_head_kv*hd] keys before RoPE (only with an observer)
  std::vector<float> edit_out_;       // [n_head][head_dim] an edited group's attention output
  std::vector<ops::KeyRun> kept_runs_;       // an edited token's runs without the sink ranges
  std::vector<ops::KeyRun> sink_runs_;       // and its sink ranges' runs
  std::vector<ops::SinkSplit> split_modes_;  // [n_head] the edit's sink splits
};

}  // namespace spillway::model::detail
