// Row ops: the scalar definitions, and the entry points that run the kernel table's versions
// (kernels.h).
#include "spillway/ops/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "kernels.h"
#include "spillway/core/error.h"

namespace spillway::ops {

namespace {

void check_rope(int64_t n_head, int64_t head_dim, int64_t n_rot) {
  if (n_head < 0 || head_dim <= 0 || n_rot < 0 || n_rot % 2 != 0 || n_rot > head_dim) {
    throw InvalidArgument(
        fmt::format("rope: n_rot {} must be even and at most head_dim {} (n_head {})", n_rot,
                    head_dim, n_head));
  }
}

}  // namespace

namespace detail {

void rmsnorm_scalar(const float* x, const float* w, float* y, int64_t n, float eps) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void swiglu_scalar(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// The sum in double: one float accumulator over a vocabulary's worth of terms drifts by
// more than the SIMD versions' 8 or 16 lanes do.
void softmax_scalar(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const auto s = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void geglu_scalar(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gelu_tanh(gate[i]) * up[i];
}

}  // namespace detail

void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps) {
  if (n <= 0) return;
  detail::kernels().rmsnorm(x, w, y, n, eps);
}

void swiglu(float* gate, const float* up, int64_t n) {
  if (n <= 0) return;
  detail::kernels().swiglu(gate, up, n);
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  detail::kernels().softmax(x, n);
}

void geglu(float* gate, const float* up, int64_t n) {
  if (n <= 0) return;
  detail::kernels().geglu(gate, up, n);
}

void rope_angles(int64_t pos, const double* inv_freq, int64_t n_rot, float* angles) {
  const double p = static_cast<double>(pos);
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double theta = p * inv_freq[i];
    angles[i] = static_cast<float>(std::cos(theta));
    angles[half + i] = static_cast<float>(std::sin(theta));
  }
}

void rope_apply(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, const float* angles,
                RopeStyle style) {
  check_rope(n_head, head_dim, n_rot);
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float c = angles[i], s = angles[half + i];
    const int64_t a = style == RopeStyle::kAdjacent ? 2 * i : i;
    const int64_t b = style == RopeStyle::kAdjacent ? 2 * i + 1 : i + half;
    for (int64_t h = 0; h < n_head; ++h) {
      float* v = x + h * head_dim;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void rope_with(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
               const double* inv_freq, RopeStyle style) {
  check_rope(n_head, head_dim, n_rot);
  std::vector<float> angles(static_cast<size_t>(n_rot));
  rope_angles(pos, inv_freq, n_rot, angles.data());
  rope_apply(x, n_head, head_dim, n_rot, angles.data(), style);
}

void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos, double freq_base,
          double freq_scale, RopeStyle style) {
  check_rope(n_head, head_dim, n_rot);
  std::vector<double> inv(static_cast<size_t>(n_rot / 2));
  for (int64_t i = 0; i < n_rot / 2; ++i)
    inv[static_cast<size_t>(i)] = freq_scale * std::pow(freq_base, -2.0 * static_cast<double>(i) /
                                                                       static_cast<double>(n_rot));
  rope_with(x, n_head, head_dim, n_rot, pos, inv.data(), style);
}

}  // namespace spillway::ops
