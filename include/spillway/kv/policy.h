// KV-cache policies. A policy owns the slot metadata of a cache: which stream token sits
// in which slot, at which position its key was rotated, and which slots each new token
// attends to with its query rotated at which position. It knows nothing of tensors or
// weights; the model asks it for a BatchPlan and follows it.
//
// Position semantics (docs/architecture.md, the contract). With positions=cache the
// span's tokens get positions 0,1,2,... in stream order and token n sits at |span|-1. RoPE
// scores depend only on the query-key distance, so no cached key is ever re-rotated:
// every key is rotated once at its stream index (TokenPlan::key_pos), window ranges are
// scored with the query rotated at n (exact distances n-m), and sink ranges with a query
// copy rotated at min(n, S+W-1) (distances S+W-1-j, as if the window sat right after the
// sinks). With positions=absolute every range uses the query at n.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "spillway/core/serial.h"
#include "spillway/core/types.h"

namespace spillway::kv {

struct CacheShape;    // cache.h
struct VirtualSinks;  // virtual_sinks.h

enum class PositionMode { kCache, kAbsolute };

// A run of cache slots [begin, end) whose keys are scored against the query rotated at
// query_pos. `sink` marks a run of tokens kept as attention sinks (not for recency):
// analyses may leave such runs out of a head's softmax.
struct SlotRange {
  int32_t begin = 0;
  int32_t end = 0;
  int64_t query_pos = 0;
  bool sink = false;
};

// What one new token does: its K/V go to write_slot, its key is rotated at key_pos, and
// its query attends to ranges[range_begin, range_end) of the owning BatchPlan (ranges may
// include the token's own slot and slots written earlier in the same batch).
struct TokenPlan {
  int64_t stream_index = 0;
  int32_t write_slot = 0;
  int64_t key_pos = 0;
  int32_t range_begin = 0;
  int32_t range_end = 0;
  bool virtual_sink = false;  // the plan's sink_logits join this token's softmax
};

// Before a step, the K/V of slot `from` are copied to slot `to` (every layer the plan
// governs): a kept token leaves the slot a new token needs. A copy, not a re-rotation.
struct SlotMove {
  int32_t from = 0;
  int32_t to = 0;
};

struct BatchPlan {
  std::vector<TokenPlan> tokens;
  std::vector<SlotRange> ranges;
  std::vector<SlotMove> moves;  // applied in order before the step's tokens are stored
  // A virtual sink in the softmax of every query head of the tokens that ask for it
  // (TokenPlan::virtual_sink): a logit with no value ([n_head], or one value for every
  // head; -inf: none for that head).
  std::vector<float> sink_logits;
  // Or fitted virtual sinks (nullsink:W,fit=FILE), one per layer and head: for the tokens
  // that ask for a virtual sink, each head of layer l gets its logit from the table's row
  // l and, when the table has values, adds its value weighted by the sink's probability.
  // Shared, immutable; sink_logits must then be empty.
  std::shared_ptr<const VirtualSinks> fitted_sinks;
  void clear() {
    tokens.clear();
    ranges.clear();
    moves.clear();
    sink_logits.clear();
    fitted_sinks.reset();
  }
  // Number of slots token i attends to.
  int64_t span_size(size_t i) const;
};

// Options after a comma that change what a policy plans: positions= (every policy), and
// options of the policy's own kind (PolicyKind::option_keys, e.g. calib= of nullsink), in
// the order given.
struct PolicyOptions {
  PositionMode positions = PositionMode::kCache;
  std::vector<std::pair<std::string, std::string>> kind_options;
  // The value of a kind option, or nullopt.
  std::optional<std::string> find(std::string_view key) const;
};

// What one layer's attention did for the tokens of a step, handed to a policy that asked
// for it (Policy::wants_attention).
struct AttentionFeedback {
  int64_t layer = 0;
  const BatchPlan* plan = nullptr;  // the policy's plan of the step
  int64_t n_tokens = 0;
  int64_t n_head = 0;
  // Token t's probabilities over its ranges concatenated in plan order:
  // probs + offset[t], [n_head][span(t)]; offset has n_tokens + 1 entries.
  const float* probs = nullptr;
  const int64_t* offset = nullptr;
  // [n_tokens][n_head] log-sum-exp of each head's scaled scores (no virtual sink).
  const double* lse = nullptr;
};

// Which layers of a model with native sliding-window ("local") layers the policy governs.
enum class LocalLayers {
  kNative,  // local layers keep the window they were trained with; the policy governs
            // the global layers
  kPolicy,  // every layer follows the policy (an experiment: local layers lose their window)
};

// The spec option naming a KV element type: "" for F32 (the default), ",kv=f16",
// ",kv=q8_0".
std::string kv_type_suffix(DType t);

// A parsed policy spec: "name[:args][,key=value...]". Parsed once, then passed around as
// a value. Keys: positions=cache|absolute (the policy's), kv=f32|f16|q8_0 (the storage's
// element type), local=native|policy (which layers the policy governs).
class PolicySpec {
 public:
  // "full".
  PolicySpec();
  // Parses and checks the spec (arguments included). Throws InvalidArgument naming the bad
  // part and listing the valid forms. Explicit: parsing can throw, so it is spelled out
  // where it happens.
  explicit PolicySpec(std::string_view text);

  const std::string& kind() const { return kind_; }  // registered name ("sink")
  const std::string& args() const { return args_; }  // text after ':' ("4+1020")
  const PolicyOptions& options() const { return options_; }
  DType kv_type() const { return kv_type_; }
  LocalLayers local() const { return local_; }
  // Canonical text: defaults left out ("sink:4+1020,kv=f16").
  const std::string& str() const { return canonical_; }

 private:
  std::string kind_, args_;
  PolicyOptions options_;
  DType kv_type_ = DType::F32;
  LocalLayers local_ = LocalLayers::kNative;
  std::string canonical_;
};

// Largest count a policy spec may give (a window, a number of sinks, a cache size):
// 2^24 tokens. Policies that score tokens keep metadata per slot from construction on
// (one copy per layer for per-layer policies), so the bound keeps a policy of a legal spec
// within a few hundred MB before the cache's memory check (kv/cache.h) sees the KV bytes.
inline constexpr int64_t kMaxPolicySlots = int64_t{1} << 24;

// Sizing of a policy instance.
struct PolicyLimits {
  // Most tokens one plan() call may hold (chunked evaluation); the storage gets
  // max_batch - 1 extra ring slots so a chunk never overwrites what its own earlier
  // tokens still attend to.
  int64_t max_batch = 1;
  // Longest stream expected (sizes a growing cache like `full`); 0 = unknown.
  int64_t max_stream = 0;
};

class Policy {
 public:
  virtual ~Policy() = default;

  // Canonical spec of the policy itself ("sink:4+1020", positions= included when not
  // the default; storage and layer options belong to PolicySpec).
  virtual std::string spec() const = 0;
  const PolicyOptions& options() const { return options_; }

  // Slots the storage must hold now (grows only for policies whose cache grows).
  virtual int64_t n_slots() const = 0;
  // Tokens a single query attends to at most (the paper's cache size); nullopt when
  // unbounded (full).
  virtual std::optional<int64_t> capacity() const = 0;
  // Tokens kept as attention sinks once the window has moved on (0: none).
  virtual int64_t n_sinks() const { return 0; }

  // Policies that decide from attention. While this is true, the session feeds one token
  // per forward step (a token's plan may depend on the attention of the token before) and
  // hands the attention of every layer the policy governs to observe(), after the
  // layer's attention of the step. Policies that never ask pay nothing.
  virtual bool wants_attention() const { return false; }
  virtual void observe(const AttentionFeedback& feedback) {}
  // Whether the policy keeps a cache of its own per layer (the cache then makes one
  // instance per layer it governs, each seeing only its layer's attention).
  virtual bool per_layer() const { return false; }

  // Throws InvalidArgument when the policy cannot plan for a cache of this shape: data of
  // its own made for another model (nullsink:W,fit=FILE). The cache asks once, when made.
  virtual void check_shape(const CacheShape& shape) const {}

  // Plans stream tokens [n0, n0 + count), appending to `out` (not cleared). Calls must
  // follow the stream: n0 equals the number of tokens planned since the last reset(),
  // 0 <= count <= the max_batch the policy was made with (InvalidArgument otherwise).
  // May raise n_slots() (full).
  void plan(int64_t n0, int64_t count, BatchPlan& out);

  // Tokens planned since the last reset (the next stream index).
  int64_t n_planned() const { return n_next_; }

  // Moves the stream ahead to stream index n >= n_planned() without planning the tokens in
  // between, for policies whose plans are a function of the stream index alone
  // (seekable(): sink:S+W and window:W); InvalidArgument otherwise. The slots then hold
  // no K/V of the skipped tokens: for checking plans at great depth (tests/unit/
  // deep_stream_test.cpp) without planning a billion tokens.
  void seek(int64_t n);
  virtual bool seekable() const { return false; }
  int64_t max_batch() const { return max_batch_; }

  // Recompute-style policies: the first stream index whose tokens must be replayed from
  // an empty cache to give token n its output; the replay restarts the stream there
  // (positions 0,1,...). nullopt for policies that keep their cache.
  virtual std::optional<int64_t> replay_from(int64_t n) const { return std::nullopt; }

  // Forgets every token and every turn mark (the stream restarts at 0).
  void reset();

  // Chat turns (session/chat.h): stream index n begins a new turn, a message of the
  // conversation (stream index 0 always begins one). Marks come in ascending order and
  // never behind the stream: n >= n_planned() and n >= the last mark (InvalidArgument
  // otherwise; a repeated mark is ignored). Policies that evict whole turns
  // (sink:S+W,evict=turn) plan by them; the others ignore them.
  void mark_turn_start(int64_t n);

  // Stream index held by each slot (-1 when empty): for tests and inspection.
  virtual std::vector<int64_t> slot_contents() const = 0;

  // An independent copy in the same state (checkpoints of a stream).
  virtual std::unique_ptr<Policy> clone() const = 0;

  // The policy's state as bytes (a session saved to disk, session.h): its spec, the stream
  // position, the last turn mark and what the policy keeps of its own (slots, scores, the
  // chosen sinks). load() takes the state of a policy of the same spec() made with the same
  // limits; it checks what it reads (FormatError for another spec or data that cannot be
  // this policy's) and on any error leaves the policy reset.
  void save(ByteWriter& w) const;
  void load(ByteReader& r);

 protected:
  Policy(const PolicyOptions& opts, const PolicyLimits& limits)
      : options_(opts), max_batch_(limits.max_batch) {}

  // plan() after its checks: n0 == n_planned(), 0 <= count <= max_batch(). n_planned()
  // advances after it returns. May throw InvalidArgument for a limit of its own.
  virtual void plan_tokens(int64_t n0, int64_t count, BatchPlan& out) = 0;
  // reset() of the policy's own state, if any.
  virtual void on_reset() {}
  // mark_turn_start() after its checks (n > the last mark, n >= n_planned()).
  virtual void on_turn_start(int64_t n) {}
  // save() and load() of the policy's own state, if any (policies whose plans depend on the
  // stream position alone have none). load_state() runs after n_planned() was restored and
  // must check what it reads (ByteReader::fail).
  virtual void save_state(ByteWriter& w) const {}
  virtual void load_state(ByteReader& r) {}

  PolicyOptions options_;

 private:
  int64_t max_batch_;
  int64_t n_next_ = 0;     // next stream index to plan
  int64_t last_mark_ = 0;  // last turn mark (0: none but the stream's start)
};

// One registered policy kind: name, usage form, and a factory from the text after ':'.
struct PolicyKind {
  std::string name;   // "sink"
  std::string usage;  // "sink:S+W"
  std::string help;   // one line
  std::function<std::unique_ptr<Policy>(std::string_view args, const PolicyOptions&,
                                        const PolicyLimits&)>
      make;
  std::vector<std::string> option_keys = {};  // options of this kind ("calib")
};

// The registered kinds (src/kv/registry.cpp: one line per policy).
const std::vector<PolicyKind>& policy_kinds();

// Makes the policy a spec describes.
std::unique_ptr<Policy> make_policy(const PolicySpec& spec, const PolicyLimits& limits = {});

// The valid forms, for error messages and --help.
std::string policy_usage();

}  // namespace spillway::kv
