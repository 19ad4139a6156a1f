#include "spillway/kv/cache.h"

#include <fmt/core.h>

#include <map>

#include "spillway/core/error.h"

namespace spillway::kv {

Cache::Cache(const PolicySpec& spec, const CacheShape& shape, const PolicyLimits& limits)
    : spec_(spec),
      storage_(static_cast<int64_t>(shape.layers.size()), shape.n_head_kv, shape.head_dim,
               spec.kv_type()) {
  if (shape.layers.empty()) throw InvalidArgument("KV cache: the model has no layers");
  groups_.push_back({make_policy(spec, limits), {}});
  std::map<int64_t, int32_t> group_of_window;  // native window -> group
  step_.group_of_layer.resize(shape.layers.size());
  for (size_t l = 0; l < shape.layers.size(); ++l) {
    const int64_t w = shape.layers[l].window;
    if (w < 0) throw InvalidArgument(fmt::format("KV cache: layer {} has window {} < 0", l, w));
    int32_t g = 0;
    if (w > 0 && spec.local() == LocalLayers::kNative) {
      auto [it, fresh] = group_of_window.try_emplace(w, static_cast<int32_t>(groups_.size()));
      if (fresh)
        groups_.push_back({make_policy(PolicySpec(fmt::format("window:{}", w)), limits), {}});
      g = it->second;
    }
    groups_[static_cast<size_t>(g)].layers.push_back(static_cast<int64_t>(l));
    step_.group_of_layer[l] = g;
  }
  step_.groups.resize(groups_.size());
  grow_storage();
}

Cache::Cache(const Cache& o)
    : spec_(o.spec_), storage_(o.storage_), step_(o.step_), bytes_peak_(o.bytes_peak_) {
  for (const Group& g : o.groups_) groups_.push_back({g.policy->clone(), g.layers});
}

Cache& Cache::operator=(const Cache& o) {
  if (this == &o) return *this;
  Cache copy(o);
  spec_ = std::move(copy.spec_);
  groups_ = std::move(copy.groups_);
  storage_ = std::move(copy.storage_);
  step_ = std::move(copy.step_);
  bytes_peak_ = copy.bytes_peak_;
  return *this;
}

void Cache::grow_storage() {
  for (const Group& g : groups_)
    for (int64_t l : g.layers) storage_.reserve(l, std::max<int64_t>(1, g.policy->n_slots()));
  bytes_peak_ = std::max(bytes_peak_, storage_.bytes());
}

const StepPlan& Cache::plan(int64_t n0, int64_t count) {
  bool grew = false;
  for (size_t g = 0; g < groups_.size(); ++g) {
    BatchPlan& p = step_.groups[g];
    p.clear();
    groups_[g].policy->plan(n0, count, p);
    for (int64_t l : groups_[g].layers) grew |= groups_[g].policy->n_slots() > storage_.n_slots(l);
  }
  if (grew) grow_storage();
  return step_;
}

void Cache::reset() {
  for (Group& g : groups_) g.policy->reset();
  for (BatchPlan& p : step_.groups) p.clear();
}

}  // namespace spillway::kv
