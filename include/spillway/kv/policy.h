// KV-cache policies. A policy owns the slot metadata of a cache: which stream token sits
// in which slot, at which position its key was rotated, and which slots each new token
// attends to with its query rotated at which position. It knows nothing of tensors or
// weights; the model asks it for a BatchPlan and follows it.
//
// Position semantics (DESIGN.md, contract). With positions=cache the span's tokens get
// positions 0,1,2,... in stream order and token n sits at |span|-1. RoPE scores depend
// only on the query-key distance, so no cached key is ever re-rotated: every key is
// rotated once at its stream index (TokenPlan::key_pos), window ranges are scored with
// the query rotated at n (exact distances n-m), and sink ranges with a query copy rotated
// at min(n, S+W-1) (distances S+W-1-j, as if the window sat right after the sinks).
// With positions=absolute every range uses the query at n.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/core/types.h"

namespace spillway::kv {

enum class PositionMode { kCache, kAbsolute };

// A run of cache slots [begin, end) whose keys are scored against the query rotated at
// query_pos.
struct SlotRange {
  int32_t begin = 0;
  int32_t end = 0;
  int64_t query_pos = 0;
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
};

struct BatchPlan {
  std::vector<TokenPlan> tokens;
  std::vector<SlotRange> ranges;
  void clear() {
    tokens.clear();
    ranges.clear();
  }
  // Number of slots token i attends to.
  int64_t span_size(size_t i) const;
};

// Options that every policy spec accepts after a comma.
struct PolicyOptions {
  PositionMode positions = PositionMode::kCache;
  DType kv_type = DType::F32;  // element type of the KV storage: F32 or F16
};

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

  // Canonical spec ("sink:4+1020", options included when not default).
  virtual std::string spec() const = 0;
  const PolicyOptions& options() const { return options_; }

  // Slots the storage must hold now (grows only for policies whose cache grows).
  virtual int64_t n_slots() const = 0;
  // Tokens a single query attends to at most (the paper's cache size); nullopt when
  // unbounded (full).
  virtual std::optional<int64_t> capacity() const = 0;

  // Plans stream tokens [n0, n0 + count), appending to `out` (not cleared). Calls must
  // follow the stream: n0 equals the number of tokens planned since the last reset().
  // count <= the max_batch the policy was made with. May raise n_slots() (full).
  virtual void plan(int64_t n0, int64_t count, BatchPlan& out) = 0;

  // Recompute-style policies: the first stream index whose tokens must be replayed from
  // an empty cache to give token n its output; the replay restarts the stream there
  // (positions 0,1,...). nullopt for policies that keep their cache.
  virtual std::optional<int64_t> replay_from(int64_t n) const { return std::nullopt; }

  // Forgets every token (the stream restarts at 0).
  virtual void reset() = 0;

  // Stream index held by each slot (-1 when empty): for tests and inspection.
  virtual std::vector<int64_t> slot_contents() const = 0;

 protected:
  explicit Policy(PolicyOptions opts) : options_(opts) {}
  PolicyOptions options_;
};

// One registered policy kind: name, usage form, and a factory from the text after ':'.
struct PolicyKind {
  std::string name;   // "sink"
  std::string usage;  // "sink:S+W"
  std::string help;   // one line
  std::function<std::unique_ptr<Policy>(std::string_view args, const PolicyOptions&,
                                        const PolicyLimits&)>
      make;
};

// The registered kinds (src/kv/registry.cpp: one line per policy).
const std::vector<PolicyKind>& policy_kinds();

// Parses "name[:args][,key=value...]" (keys: positions=cache|absolute, kv=f32|f16) and
// makes the policy. Throws InvalidArgument naming the bad part and listing valid forms.
std::unique_ptr<Policy> make_policy(std::string_view spec, const PolicyLimits& limits = {});

// The valid forms, for error messages and --help.
std::string policy_usage();

}  // namespace spillway::kv
