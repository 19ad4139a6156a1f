// A model's KV cache: the storage of every layer plus the policies that decide, for each
// group of layers, where a new token's K/V go and what it attends to.
//
// Most models attend the same way in every layer: one group, one policy (one per layer
// for policies that keep a cache of their own per layer, Policy::per_layer). Models with
// native sliding-window ("local") layers (Gemma 3: 5 of every 6 layers see only the last
// 512 tokens) get one group per distinct window: with local=native (the default) those
// layers keep the window they were trained with (a `window:W` policy of their own) and
// the spec's policy governs the global layers; with local=policy every layer follows the
// spec's policy. Storage is sized per layer from its group's policy, so a local layer
// never holds more than its window plus the batch ring. The positions contract of
// policy.h holds per group.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "spillway/kv/kv_storage.h"
#include "spillway/kv/policy.h"

namespace spillway::kv {

// How one layer attends, as far as its cache is concerned.
struct LayerAttention {
  int64_t window = 0;  // 0: global (the policy's span); > 0: native sliding window of this
                       // many tokens, the token itself included
};

struct CacheShape {
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  std::vector<LayerAttention> layers;  // [n_layer]
  // The model the cache is for, for policies that carry data of a model of their own
  // (nullsink:W,fit=FILE) to refuse another's. 0 and "": unknown (a shape built by hand).
  int64_t n_head = 0;
  uint64_t fingerprint = 0;
  std::string architecture;
};

// The plans of one forward step, one BatchPlan per group of layers (same tokens, same
// stream indices in each).
struct StepPlan {
  std::vector<BatchPlan> groups;        // [n_groups]
  std::vector<int32_t> group_of_layer;  // [n_layer]
  const BatchPlan& layer(int64_t l) const {
    return groups[static_cast<size_t>(group_of_layer[static_cast<size_t>(l)])];
  }
  int64_t n_tokens() const {
    return groups.empty() ? 0 : static_cast<int64_t>(groups[0].tokens.size());
  }
};

class Cache {
 public:
  // Makes the policy of a spec (or, with a factory, a policy of the caller's: a policy
  // written outside the registry; the spec then gives only its kv= and local= options and
  // its text). Throws InvalidArgument for a shape without layers, limits the policy
  // rejects, or a cache whose KV storage would exceed the machine's physical memory (the
  // message names the policy, the bytes and the memory; checked before the storage or the
  // per-layer copies of the policy are allocated, so a hostile spec is an error, not an
  // out-of-memory kill), and whatever the policy's check_shape() refuses (data fitted to
  // another model).
  using PolicyFactory = std::function<std::unique_ptr<Policy>(const PolicyLimits&)>;
  Cache(const PolicySpec& spec, const CacheShape& shape, const PolicyLimits& limits,
        const PolicyFactory& factory = {});
  // Copies are independent caches in the same state (storage copied, policies cloned).
  Cache(const Cache& other);
  Cache& operator=(const Cache& other);

  const PolicySpec& spec() const { return spec_; }
  // The cache's policy in words: the spec's text, or for a policy of the caller's its own
  // spec() with the spec's storage and layer options.
  std::string describe() const;
  // The spec's policy (group 0: the global layers, or every layer).
  const Policy& policy() const { return *groups_[0].policy; }
  int n_groups() const { return static_cast<int>(groups_.size()); }
  const Policy& group_policy(int g) const { return *groups_[static_cast<size_t>(g)].policy; }
  // Layers of group g, ascending.
  const std::vector<int64_t>& group_layers(int g) const {
    return groups_[static_cast<size_t>(g)].layers;
  }

  // Plans stream tokens [n0, n0 + count) in every group into step() (replacing the last
  // step) and grows the storage of the layers whose policy grew. Same contract as
  // Policy::plan.
  const StepPlan& plan(int64_t n0, int64_t count);
  const StepPlan& step() const { return step_; }
  int64_t n_planned() const { return policy().n_planned(); }
  std::optional<int64_t> replay_from(int64_t n) const { return policy().replay_from(n); }
  // Tokens a query of a global layer attends to at most (nullopt: unbounded).
  std::optional<int64_t> capacity() const { return policy().capacity(); }
  // Forgets every token in every group.
  void reset();
  // Moves every group's stream to index n without planning the tokens in between
  // (Policy::seek: InvalidArgument unless every group's policy is seekable). The last step
  // is forgotten.
  void seek(int64_t n);

  // Saved state (Session::save): the policies of every group, the storage and its peak.
  // load() takes the state of a cache made from the same spec, shape and limits
  // (FormatError otherwise, or for data that does not fit); the last step's plan is not
  // saved, so step() is empty after it. On an error the cache is left reset.
  void save(ByteWriter& w) const;
  void load(ByteReader& r);
  // Stream index n begins a chat turn (Policy::mark_turn_start), told to every group's
  // policy (those that do not evict by turns ignore it).
  void mark_turn_start(int64_t n);

  // Policies that decide from attention (Policy::wants_attention): whether any does now,
  // whether the policy of `layer` does, and the feedback of one layer's attention, handed
  // to that layer's policy. While any does, a step holds one token (max_step() == 1).
  bool wants_attention() const;
  bool layer_wants_attention(int64_t layer) const;
  void observe(const AttentionFeedback& feedback);
  // Most tokens the next plan() may hold, and the most any plan() will (1 for policies
  // that decide from attention or keep a cache per layer, else the limits' max_batch).
  int64_t max_step() const { return wants_attention() ? 1 : max_batch_; }
  int64_t max_batch() const { return max_batch_; }

  KvStorage& storage() { return storage_; }
  const KvStorage& storage() const { return storage_; }
  uint64_t bytes_peak() const { return bytes_peak_; }
  // KV bytes one decoded token reads with `depth` tokens in the stream: in every layer the
  // keys and values of the tokens its query attends to (its group's capacity, at most
  // `depth`), every KV head. The KV part of decode's memory bound (session/memory_bound.h).
  uint64_t kv_bytes_read_per_token(int64_t depth) const;

 private:
  struct Group {
    std::unique_ptr<Policy> policy;
    std::vector<int64_t> layers;
  };
  void grow_storage();

  PolicySpec spec_;
  bool custom_ = false;  // made by a factory
  int64_t max_batch_ = 1;
  std::vector<Group> groups_;
  KvStorage storage_;
  StepPlan step_;
  uint64_t bytes_peak_ = 0;
};

}  // namespace spillway::kv
