#include "slot_set.h"

#include <fmt/core.h>

#include <algorithm>

#include "spillway/core/error.h"

namespace spillway::kv {

SlotSet::SlotSet(int64_t n_slots) : slot_stream_(static_cast<size_t>(n_slots), -1) {
  held_.reserve(static_cast<size_t>(n_slots));
  free_.reserve(static_cast<size_t>(n_slots));
  clear();
}

void SlotSet::clear() {
  std::fill(slot_stream_.begin(), slot_stream_.end(), -1);
  held_.clear();
  free_.clear();
  // The stack pops the lowest slot first.
  for (auto s = static_cast<int32_t>(slot_stream_.size()) - 1; s >= 0; --s) free_.push_back(s);
  next_ = 0;
}

std::vector<std::pair<int64_t, int32_t>>::iterator SlotSet::find(int64_t stream) {
  auto it = std::lower_bound(held_.begin(), held_.end(), std::make_pair(stream, INT32_MIN));
  return it != held_.end() && it->first == stream ? it : held_.end();
}

bool SlotSet::contains(int64_t stream) const {
  auto it = std::lower_bound(held_.begin(), held_.end(), std::make_pair(stream, INT32_MIN));
  return it != held_.end() && it->first == stream;
}

void SlotSet::evict(int64_t stream) {
  auto it = find(stream);
  if (it == held_.end()) return;
  slot_stream_[static_cast<size_t>(it->second)] = -1;
  free_.push_back(it->second);
  held_.erase(it);
}

int32_t SlotSet::admit(int64_t n, std::vector<SlotMove>& moves) {
  if (!held_.empty() && n <= held_.back().first)
    throw InvalidArgument(
        fmt::format("slot set: token {} admitted after {}", n, held_.back().first));
  const int32_t slot = next_;
  next_ = static_cast<int32_t>((next_ + 1) % static_cast<int32_t>(slot_stream_.size()));
  const int64_t there = slot_stream_[static_cast<size_t>(slot)];
  if (there >= 0) {
    // A kept token sits under the pointer: move it to a free slot.
    if (free_.empty()) throw InvalidArgument(fmt::format("slot set: no free slot for token {}", n));
    const int32_t to = free_.back();
    free_.pop_back();
    moves.push_back({slot, to});
    slot_stream_[static_cast<size_t>(to)] = there;
    find(there)->second = to;
  } else {
    free_.erase(std::find(free_.begin(), free_.end(), slot));
  }
  slot_stream_[static_cast<size_t>(slot)] = n;
  held_.emplace_back(n, slot);
  return slot;
}

void SlotSet::append_ranges(int64_t n, PositionMode mode, std::vector<SlotRange>& out,
                            const std::vector<int64_t>* sinks) const {
  const int64_t q_rank = size() - 1;  // the query's rank: it is the newest held token
  int64_t rank = 0;
  SlotRange cur;
  bool open = false;
  int64_t last_stream = 0;
  for (const auto& [m, slot] : held_) {
    const bool sink = sinks && std::binary_search(sinks->begin(), sinks->end(), m);
    const bool extends = open && m == last_stream + 1 && slot == cur.end && sink == cur.sink;
    if (!extends) {
      if (open) out.push_back(cur);
      cur.begin = slot;
      cur.end = slot;
      // Distance from the query = rank distance: q - m = q_rank - rank(m).
      cur.query_pos = mode == PositionMode::kCache ? q_rank + (m - rank) : n;
      cur.sink = sink;
      open = true;
    }
    ++cur.end;
    last_stream = m;
    ++rank;
  }
  if (open) out.push_back(cur);
}

}  // namespace spillway::kv
