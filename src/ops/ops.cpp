// Row ops: scalar definitions, with AVX2 versions of the exp-heavy ones chosen at run time.
#include "spillway/ops/ops.h"

#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "matmul_internal.h"
#include "spillway/core/error.h"

namespace spillway::ops {

namespace {

bool use_avx2() {
  static const bool v = detail::cpu_has_avx2();
  return v;
}

void check_rope(int64_t n_head, int64_t head_dim, int64_t n_rot) {
  if (n_head < 0 || head_dim <= 0 || n_rot < 0 || n_rot % 2 != 0 || n_rot > head_dim) {
    throw InvalidArgument(
        fmt::format("rope: n_rot {} must be even and at most head_dim {} (n_head {})", n_rot,
                    head_dim, n_head));
  }
}

}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps) {
  if (n <= 0) return;
  if (use_avx2()) {
    detail::rmsnorm_avx2(x, w, y, n, eps);
    return;
  }
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void swiglu(float* gate, const float* up, int64_t n) {
  if (use_avx2()) {
    detail::swiglu_avx2(gate, up, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  if (use_avx2()) {
    detail::softmax_avx2(x, n);
    return;
  }
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float s = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void geglu(float* gate, const float* up, int64_t n) {
  if (use_avx2()) {
    detail::geglu_avx2(gate, up, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) gate[i] = detail::gelu_tanh(gate[i]) * up[i];
}

namespace {

// Rotates pair i of every head by theta (cos/sin in double, applied in float): elements
// (2i, 2i+1) or (i, i + half).
inline void rotate_pair(float* x, int64_t n_head, int64_t head_dim, int64_t i, int64_t half,
                        RopeStyle style, double theta) {
  const float c = static_cast<float>(std::cos(theta));
  const float s = static_cast<float>(std::sin(theta));
  const int64_t a = style == RopeStyle::kAdjacent ? 2 * i : i;
  const int64_t b = style == RopeStyle::kAdjacent ? 2 * i + 1 : i + half;
  for (int64_t h = 0; h < n_head; ++h) {
    float* v = x + h * head_dim;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

}  // namespace

void rope_with(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
               const double* inv_freq, RopeStyle style) {
  check_rope(n_head, head_dim, n_rot);
  const double p = static_cast<double>(pos);
  for (int64_t i = 0; i < n_rot / 2; ++i)
    rotate_pair(x, n_head, head_dim, i, n_rot / 2, style, p * inv_freq[i]);
}

void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos, double freq_base,
          double freq_scale, RopeStyle style) {
  check_rope(n_head, head_dim, n_rot);
  const double p = static_cast<double>(pos);
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const double inv = freq_scale * std::pow(freq_base, -2.0 * static_cast<double>(i) /
                                                            static_cast<double>(n_rot));
    rotate_pair(x, n_head, head_dim, i, n_rot / 2, style, p * inv);
  }
}

}  // namespace spillway::ops
