#include "spillway/kv/cache.h"

#include <fmt/core.h>

#include <unistd.h>

#include <algorithm>
#include <limits>
#include <map>

#include "spillway/core/error.h"

namespace spillway::kv {

namespace {

uint64_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

// The KV bytes of n_slots slots in every layer (an upper bound: layers with a native
// window hold fewer), or InvalidArgument when that is more than the machine's memory.
void check_memory(const PolicySpec& spec, int64_t n_layer, int64_t n_head_kv, int64_t head_dim,
                  int64_t n_slots) {
  const uint64_t elem = spec.kv_type() == DType::F16 ? 2 : 4;
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  uint64_t per_slot = 2 * elem;  // K and V
  for (const int64_t f : {n_head_kv, head_dim, n_layer}) {
    const auto u = static_cast<uint64_t>(std::max<int64_t>(f, 0));
    per_slot = u != 0 && per_slot > max / u ? max : per_slot * u;
  }
  const auto slots = static_cast<uint64_t>(std::max<int64_t>(n_slots, 1));
  const uint64_t bytes = per_slot > max / slots ? max : per_slot * slots;
  const uint64_t mem = physical_memory();
  if (bytes > mem)
    throw InvalidArgument(fmt::format(
        "KV cache of policy '{}': {} slots x {} layers x {} KV heads x head dim {} need {:.1f} "
        "GiB, more than this machine's {:.1f} GiB of memory",
        spec.str(), n_slots, n_layer, n_head_kv, head_dim, static_cast<double>(bytes) / (1 << 30),
        static_cast<double>(mem) / (1 << 30)));
}

}  // namespace

Cache::Cache(const PolicySpec& spec, const CacheShape& shape, const PolicyLimits& limits,
             const PolicyFactory& factory)
    : spec_(spec),
      max_batch_(limits.max_batch),
      storage_(static_cast<int64_t>(shape.layers.size()), shape.n_head_kv, shape.head_dim,
               spec.kv_type()) {
  if (shape.layers.empty()) throw InvalidArgument("KV cache: the model has no layers");
  const auto make = [&](const PolicyLimits& l) {
    std::unique_ptr<Policy> p = factory ? factory(l) : make_policy(spec, l);
    if (!p) throw InvalidArgument("KV cache: the policy factory made no policy");
    return p;
  };
  custom_ = static_cast<bool>(factory);
  std::unique_ptr<Policy> proto = make(limits);
  if (proto->wants_attention() || proto->per_layer()) {
    // Plans follow the attention token by token: no batch ring.
    max_batch_ = 1;
    proto = make(PolicyLimits{1, limits.max_stream});
  }
  proto->check_shape(shape);
  check_memory(spec, static_cast<int64_t>(shape.layers.size()), shape.n_head_kv, shape.head_dim,
               proto->n_slots());
  // The layers the spec's policy governs, and those that keep a native window.
  std::vector<int64_t> governed;
  std::map<int64_t, std::vector<int64_t>> native;  // window -> layers
  for (size_t l = 0; l < shape.layers.size(); ++l) {
    const int64_t w = shape.layers[l].window;
    if (w < 0) throw InvalidArgument(fmt::format("KV cache: layer {} has window {} < 0", l, w));
    if (w > 0 && spec.local() == LocalLayers::kNative)
      native[w].push_back(static_cast<int64_t>(l));
    else
      governed.push_back(static_cast<int64_t>(l));
  }
  // Group 0 is the spec's policy (its first instance when there is one per layer).
  if (proto->per_layer() && governed.size() > 1) {
    groups_.push_back({std::move(proto), {governed[0]}});
    for (size_t i = 1; i < governed.size(); ++i)
      groups_.push_back({groups_[0].policy->clone(), {governed[i]}});
  } else {
    groups_.push_back({std::move(proto), governed});
  }
  for (auto& [w, layers] : native)
    groups_.push_back({make_policy(PolicySpec(fmt::format("window:{}", w)),
                                   PolicyLimits{max_batch_, limits.max_stream}),
                       layers});
  step_.group_of_layer.assign(shape.layers.size(), 0);
  for (size_t g = 0; g < groups_.size(); ++g)
    for (int64_t l : groups_[g].layers)
      step_.group_of_layer[static_cast<size_t>(l)] = static_cast<int32_t>(g);
  step_.groups.resize(groups_.size());
  if (max_batch_ == 1) {
    // One token per step: a scattered cache has at most a run per slot and a move per step;
    // room for both up front, so that a decoded token allocates nothing.
    for (size_t g = 0; g < groups_.size(); ++g) {
      step_.groups[g].ranges.reserve(static_cast<size_t>(groups_[g].policy->n_slots() + 2));
      step_.groups[g].moves.reserve(2);
      step_.groups[g].tokens.reserve(1);
    }
  }
  grow_storage();
}

std::string Cache::describe() const {
  if (!custom_) return spec_.str();
  std::string s = policy().spec();
  s += kv_type_suffix(spec_.kv_type());
  if (spec_.local() == LocalLayers::kPolicy) s += ",local=policy";
  return s;
}

bool Cache::wants_attention() const {
  for (const Group& g : groups_)
    if (g.policy->wants_attention()) return true;
  return false;
}

bool Cache::layer_wants_attention(int64_t layer) const {
  return groups_[static_cast<size_t>(step_.group_of_layer[static_cast<size_t>(layer)])]
      .policy->wants_attention();
}

void Cache::observe(const AttentionFeedback& f) {
  Policy& p =
      *groups_[static_cast<size_t>(step_.group_of_layer[static_cast<size_t>(f.layer)])].policy;
  if (p.wants_attention()) p.observe(f);
}

Cache::Cache(const Cache& o)
    : spec_(o.spec_),
      custom_(o.custom_),
      max_batch_(o.max_batch_),
      storage_(o.storage_),
      step_(o.step_),
      bytes_peak_(o.bytes_peak_) {
  for (const Group& g : o.groups_) groups_.push_back({g.policy->clone(), g.layers});
}

Cache& Cache::operator=(const Cache& o) {
  if (this == &o) return *this;
  Cache copy(o);
  spec_ = std::move(copy.spec_);
  max_batch_ = copy.max_batch_;
  custom_ = copy.custom_;
  groups_ = std::move(copy.groups_);
  storage_ = std::move(copy.storage_);
  step_ = std::move(copy.step_);
  bytes_peak_ = copy.bytes_peak_;
  return *this;
}

void Cache::grow_storage() {
  // A growing cache (full) stops with an error where its storage would pass the memory.
  int64_t most = 0;
  for (const Group& g : groups_) most = std::max(most, g.policy->n_slots());
  check_memory(spec_, storage_.n_layer(), storage_.n_head_kv(), storage_.head_dim(), most);
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

void Cache::mark_turn_start(int64_t n) {
  for (Group& g : groups_) g.policy->mark_turn_start(n);
}

void Cache::reset() {
  for (Group& g : groups_) g.policy->reset();
  for (BatchPlan& p : step_.groups) p.clear();
}

void Cache::seek(int64_t n) {
  for (const Group& g : groups_)
    if (!g.policy->seekable())
      throw InvalidArgument(fmt::format(
          "seek to stream index {}: policy '{}' plans from the tokens before, so it cannot skip "
          "them",
          n, g.policy->spec()));
  for (Group& g : groups_) g.policy->seek(n);
  for (BatchPlan& p : step_.groups) p.clear();
}

void Cache::save(ByteWriter& w) const {
  w.put_string(describe());
  w.put<int64_t>(max_batch_);
  w.put<uint64_t>(groups_.size());
  for (const Group& g : groups_) g.policy->save(w);
  storage_.save(w);
  w.put<uint64_t>(bytes_peak_);
}

void Cache::load(ByteReader& r) {
  const std::string saved = r.get_string("cache policy", 1 << 16);
  if (saved != describe())
    r.fail(fmt::format("the state is of a cache under '{}', this one is under '{}'", saved,
                       describe()));
  const auto max_batch = r.get<int64_t>("cache max batch");
  if (max_batch != max_batch_)
    r.fail(fmt::format("the state is of a cache of max batch {}, this one's is {}", max_batch,
                       max_batch_));
  const auto n_groups = r.get<uint64_t>("cache layer groups");
  if (n_groups != groups_.size())
    r.fail(fmt::format("the state has {} layer group(s), this cache {}", n_groups, groups_.size()));
  try {
    for (Group& g : groups_) g.policy->load(r);
    storage_.load(r);
    for (const Group& g : groups_)
      for (int64_t l : g.layers)
        if (g.policy->n_slots() > storage_.n_slots(l))
          r.fail(fmt::format("layer {}: the policy needs {} slots, the saved storage has {}", l,
                             g.policy->n_slots(), storage_.n_slots(l)));
    bytes_peak_ = std::max(r.get<uint64_t>("cache peak bytes"), storage_.bytes());
  } catch (...) {
    reset();
    throw;
  }
  for (BatchPlan& p : step_.groups) p.clear();
}

uint64_t Cache::kv_bytes_read_per_token(int64_t depth) const {
  const uint64_t per_token_layer =
      2 * static_cast<uint64_t>(storage_.n_head_kv()) * static_cast<uint64_t>(storage_.row_bytes());
  uint64_t total = 0;
  for (const Group& g : groups_) {
    const std::optional<int64_t> cap = g.policy->capacity();
    const int64_t n = std::max<int64_t>(0, cap ? std::min(*cap, depth) : depth);
    total += static_cast<uint64_t>(g.layers.size()) * per_token_layer * static_cast<uint64_t>(n);
  }
  return total;
}

}  // namespace spillway::kv
