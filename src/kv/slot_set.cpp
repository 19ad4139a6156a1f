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

void SlotSet::save(ByteWriter& w) const {
  w.put_vector(slot_stream_);
  w.put_vector(free_);  // in stack order: which free slot a moved token takes next
  w.put<int32_t>(next_);
}

void SlotSet::load(ByteReader& r, int64_t n_planned) {
  const auto n = static_cast<size_t>(n_slots());
  std::vector<int64_t> slots = r.get_vector_exact<int64_t>("slot contents", n);
  std::vector<int32_t> free_order = r.get_vector<int32_t>("free slots", n);
  const auto next = r.get<int32_t>("slot ring pointer");
  if (next < 0 || static_cast<size_t>(next) >= std::max<size_t>(n, 1))
    r.fail(fmt::format("slot ring pointer {} outside {} slots", next, n));
  std::vector<std::pair<int64_t, int32_t>> held;
  std::vector<int32_t> free;
  for (size_t s = n; s-- > 0;) {
    const int64_t m = slots[s];
    if (m < -1 || m >= n_planned)
      r.fail(fmt::format("slot {} holds stream index {}, outside -1..{}", s, m, n_planned - 1));
    if (m >= 0)
      held.emplace_back(m, static_cast<int32_t>(s));
    else
      free.push_back(static_cast<int32_t>(s));
  }
  std::sort(held.begin(), held.end());
  for (size_t i = 1; i < held.size(); ++i)
    if (held[i].first == held[i - 1].first)
      r.fail(fmt::format("stream index {} is held by two slots", held[i].first));
  std::vector<int32_t> sorted_order = free_order;
  std::sort(sorted_order.begin(), sorted_order.end());
  std::sort(free.begin(), free.end());
  if (sorted_order != free)
    r.fail(fmt::format("the free-slot list ({} slots) is not the {} empty slots", free_order.size(),
                       free.size()));
  slot_stream_ = std::move(slots);
  held_ = std::move(held);
  free_ = std::move(free_order);
  next_ = next;
}

}  // namespace spillway::kv
