// A cache that holds any set of stream tokens, for policies that evict by score (private
// to kv/). New tokens take the slot under a ring pointer, so recent tokens sit in stream
// order in consecutive slots; a kept token found under the pointer moves to a free slot
// (a SlotMove of the plan: a copy, no re-rotation). The ranges of a query are the held
// tokens in stream order, cut into maximal runs that are consecutive both in stream index
// and in slot; each run gets the query position that makes every distance the rank
// distance inside the span (positions=cache), or the query's stream index (absolute).
// Nothing is allocated after construction: a decoded token costs no heap allocation.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "spillway/kv/policy.h"

namespace spillway::kv {

class SlotSet {
 public:
  explicit SlotSet(int64_t n_slots);

  int64_t n_slots() const { return static_cast<int64_t>(slot_stream_.size()); }
  int64_t size() const { return static_cast<int64_t>(held_.size()); }
  // Held tokens as (stream index, slot), in stream order.
  const std::vector<std::pair<int64_t, int32_t>>& held() const { return held_; }
  bool contains(int64_t stream) const;

  // Forgets a held token (its slot becomes free).
  void evict(int64_t stream);
  // Takes stream index n into the slot under the ring pointer (a free slot must exist when
  // that slot is taken); appends the move of a kept token out of the way to `moves`.
  int32_t admit(int64_t n, std::vector<SlotMove>& moves);
  // Appends to `out` the ranges of query n over every held token; tokens in `sinks` (stream
  // indices, ascending) are marked as sink runs (and never share a run with other tokens).
  void append_ranges(int64_t n, PositionMode mode, std::vector<SlotRange>& out,
                     const std::vector<int64_t>* sinks = nullptr) const;
  std::vector<int64_t> slot_contents() const { return slot_stream_; }
  void clear();

  // Saved state (Policy::save). load() checks that the data is a slot set of n_slots()
  // slots holding stream indices below `n_planned`, each in one slot, the rest free.
  void save(ByteWriter& w) const;
  void load(ByteReader& r, int64_t n_planned);

 private:
  std::vector<std::pair<int64_t, int32_t>>::iterator find(int64_t stream);

  std::vector<int64_t> slot_stream_;               // [n_slots] stream index or -1
  std::vector<std::pair<int64_t, int32_t>> held_;  // (stream, slot), stream ascending
  std::vector<int32_t> free_;                      // free slots (a stack)
  int32_t next_ = 0;                               // ring pointer
};

}  // namespace spillway::kv
