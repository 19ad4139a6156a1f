#include "spillway/ops/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define SPILLWAY_ATTN_AVX2 1
#endif

namespace spillway::ops {

namespace {

inline float load_elem(const void* base, int64_t idx, DType t) {
  return t == DType::F32 ? static_cast<const float*>(base)[idx]
                         : f16_to_f32(static_cast<const uint16_t*>(base)[idx]);
}

#if SPILLWAY_ATTN_AVX2
inline __m256 load8(const void* row, int64_t i, DType t) {
  if (t == DType::F32) return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  return _mm256_cvtph_ps(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i)));
}
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// scores[g] = q_g . key for the G queries of a group (one key row).
inline void dot_group(const float* const* q, int G, const void* key, int64_t d, DType t,
                      float* scores) {
#if SPILLWAY_ATTN_AVX2
  if (d % 8 == 0 && G <= 4) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t i = 0; i < d; i += 8) {
      const __m256 kv = load8(key, i, t);
      for (int g = 0; g < G; ++g) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + i), kv, acc[g]);
    }
    for (int g = 0; g < G; ++g) scores[g] = hsum(acc[g]);
    return;
  }
#endif
  for (int g = 0; g < G; ++g) {
    float acc = 0.0f;
    for (int64_t i = 0; i < d; ++i) acc += q[g][i] * load_elem(key, i, t);
    scores[g] = acc;
  }
}

// out[g] += p[g] * value for the G heads of a group (one value row).
inline void axpy_group(float* const* out, const float* p, int G, const void* value, int64_t d,
                       DType t) {
#if SPILLWAY_ATTN_AVX2
  if (d % 8 == 0) {
    for (int64_t i = 0; i < d; i += 8) {
      const __m256 vv = load8(value, i, t);
      for (int g = 0; g < G; ++g)
        _mm256_storeu_ps(out[g] + i,
                         _mm256_fmadd_ps(_mm256_set1_ps(p[g]), vv, _mm256_loadu_ps(out[g] + i)));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < d; ++i) {
    const float x = load_elem(value, i, t);
    for (int g = 0; g < G; ++g) out[g][i] += p[g] * x;
  }
}

}  // namespace

void attend_group(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  const void* k, const void* v, float* out, float* scratch, float* probs_out) {
  const int64_t d = s.head_dim;
  const int G = static_cast<int>(s.n_head / s.n_head_kv);
  const size_t es = s.kv_type == DType::F16 ? 2 : 4;
  const auto* kb =
      static_cast<const std::byte*>(k) + static_cast<size_t>(kv_head * s.head_stride) * es;
  const auto* vb =
      static_cast<const std::byte*>(v) + static_cast<size_t>(kv_head * s.head_stride) * es;
  const size_t row = static_cast<size_t>(d) * es;
  int64_t total = 0;
  for (int r = 0; r < n_runs; ++r) total += runs[r].end - runs[r].begin;

  // Heads are processed in slices of at most 4 (registers) sharing each key/value load.
  for (int g0 = 0; g0 < G; g0 += 4) {
    const int gn = std::min(4, G - g0);
    float max_score[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t n = 0;
    for (int r = 0; r < n_runs; ++r) {
      const float* q[4];
      for (int g = 0; g < gn; ++g) q[g] = runs[r].q + (kv_head * G + g0 + g) * d;
      for (int32_t j = runs[r].begin; j < runs[r].end; ++j, ++n) {
        float sc[4];
        dot_group(q, gn, kb + row * static_cast<size_t>(j), d, s.kv_type, sc);
        for (int g = 0; g < gn; ++g) {
          sc[g] *= s.scale;
          scratch[g * total + n] = sc[g];
          max_score[g] = std::max(max_score[g], sc[g]);
        }
      }
    }
    float inv[4];
    for (int g = 0; g < gn; ++g) {
      double sum = 0.0;
      float* sg = scratch + g * total;
      for (int64_t i = 0; i < total; ++i) sum += (sg[i] = std::exp(sg[i] - max_score[g]));
      inv[g] = static_cast<float>(1.0 / sum);
    }
    float* o[4];
    for (int g = 0; g < gn; ++g) {
      o[g] = out + (kv_head * G + g0 + g) * d;
      std::fill(o[g], o[g] + d, 0.0f);
    }
    n = 0;
    for (int r = 0; r < n_runs; ++r) {
      for (int32_t j = runs[r].begin; j < runs[r].end; ++j, ++n) {
        float p[4];
        for (int g = 0; g < gn; ++g) {
          p[g] = scratch[g * total + n] * inv[g];
          if (probs_out) probs_out[(g0 + g) * total + n] = p[g];
        }
        axpy_group(o, p, gn, vb + row * static_cast<size_t>(j), d, s.kv_type);
      }
    }
  }
}

void attend_head_ref(const AttentionShape& s, int64_t head, const KeyRun* runs, int n_runs,
                     const void* k, const void* v, float* out) {
  const int64_t d = s.head_dim;
  const int64_t kvh = head / (s.n_head / s.n_head_kv);
  std::vector<double> scores;
  std::vector<int32_t> slots;
  for (int r = 0; r < n_runs; ++r) {
    const float* q = runs[r].q + head * d;
    for (int32_t j = runs[r].begin; j < runs[r].end; ++j) {
      double acc = 0.0;
      for (int64_t i = 0; i < d; ++i)
        acc += static_cast<double>(q[i]) * load_elem(k, kvh * s.head_stride + j * d + i, s.kv_type);
      scores.push_back(acc * s.scale);
      slots.push_back(j);
    }
  }
  const double mx = *std::max_element(scores.begin(), scores.end());
  double sum = 0.0;
  for (double& x : scores) sum += (x = std::exp(x - mx));
  for (int64_t i = 0; i < d; ++i) {
    double acc = 0.0;
    for (size_t j = 0; j < slots.size(); ++j)
      acc += scores[j] / sum * load_elem(v, kvh * s.head_stride + slots[j] * d + i, s.kv_type);
    out[i] = static_cast<float>(acc);
  }
}

}  // namespace spillway::ops
