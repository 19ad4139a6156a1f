// Element-wise and row-wise layer ops on f32 activations. Each has a plain scalar
// definition here in spirit; SIMD versions must agree with it (see tests/unit/ops_test).
#pragma once

#include <cstdint>

namespace spillway::ops {

// y = x / sqrt(mean(x^2) + eps) * w, over n elements. y may alias x.
void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps);

// In place: gate[i] = silu(gate[i]) * up[i].
void swiglu(float* gate, const float* up, int64_t n);

// In place numerically stable softmax over n elements.
void softmax(float* x, int64_t n);

// RoPE in the GGUF llama convention (adjacent pairs (x[2i], x[2i+1]) rotated by angle
// pos * base^(-2i/n_rot)), applied to the first n_rot dims of each of n_head heads of
// head_dim. Angles computed in double precision so huge positions keep exact distances.
// freq_scale multiplies the angle (linear scaling: 1/factor).
void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos, double freq_base,
          double freq_scale);

// Precomputed inverse frequencies for rope: inv_freq[i] = freq_scale * base^(-2i/n_rot).
void rope_with(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
               const double* inv_freq);

}  // namespace spillway::ops
