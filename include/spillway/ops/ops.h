// Element-wise and row-wise layer ops on f32 activations. Each has a plain scalar
// definition here in spirit; SIMD versions must agree with it (see tests/unit/ops_test).
#pragma once

#include <cstdint>

namespace spillway::ops {

// y = x / sqrt(mean(x^2) + eps) * w, over n elements. y may alias x.
void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps);

// In place: gate[i] = silu(gate[i]) * up[i].
void swiglu(float* gate, const float* up, int64_t n);

// In place: gate[i] = gelu(gate[i]) * up[i], GELU in its tanh form
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (Gemma's gated FFN).
void geglu(float* gate, const float* up, int64_t n);

// In place numerically stable softmax over n elements.
void softmax(float* x, int64_t n);

// Which dimensions RoPE rotates together.
enum class RopeStyle {
  kAdjacent,  // pairs (x[2i], x[2i+1]): the GGUF llama convention (weights permuted at export)
  kHalves,    // pairs (x[i], x[i + n_rot/2]): GPT-NeoX style (Gemma, Qwen, ...)
};

// RoPE on the first n_rot dims of each of n_head heads of head_dim, pair i rotated by
// angle pos * inv_freq[i], inv_freq[i] usually freq_scale * base^(-2i/n_rot). Angles in
// double precision so huge positions keep exact distances.
void rope_with(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
               const double* inv_freq, RopeStyle style = RopeStyle::kAdjacent);

// The two halves of rope_with, for rotating many rows at the same position: the cosines
// and sines of pos * inv_freq[i] (computed in double, stored as float) into
// angles[0 .. n_rot/2) and angles[n_rot/2 .. n_rot), then the rotation with them. The
// result is rope_with's, bit for bit.
void rope_angles(int64_t pos, const double* inv_freq, int64_t n_rot, float* angles);
void rope_apply(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, const float* angles,
                RopeStyle style = RopeStyle::kAdjacent);

// The same with the frequencies computed here (base^(-2i/n_rot) * freq_scale).
void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos, double freq_base,
          double freq_scale, RopeStyle style = RopeStyle::kAdjacent);

}  // namespace spillway::ops
