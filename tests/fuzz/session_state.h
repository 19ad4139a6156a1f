// The model and policies of the session_state fuzz target, shared with make_seeds.cpp so
// that the seeds are states of exactly the sessions the target loads them into.
#pragma once

#include <array>
#include <cstdint>

#include "util/tiny_model.h"

namespace spillway::fuzz {

inline test::TinyModelSpec session_state_model() {
  test::TinyModelSpec spec;
  spec.n_layer = 2;
  spec.seed = 5;
  return spec;
}

// The first input byte picks one (modulo the count).
inline constexpr std::array<const char*, 10> kSessionStatePolicies = {
    "sink:4+12",    "window:10",   "sink:2+8,evict=turn", "h2o:4+8", "tova:12",
    "detected:2+8", "nullsink:12", "recompute:8",         "full",    "sink:4+12,kv=f16"};
inline constexpr int64_t kSessionStateMaxBatch = 4;

}  // namespace spillway::fuzz
