#include "spillway/ops/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace spillway::ops {

namespace {

// Dot product of an f32 query row with one cached key row (f32 or f16).
inline float dot_key(const float* q, const void* k, int64_t j, int64_t d, DType t) {
#if defined(__AVX512F__)
  if (d % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    if (t == DType::F32) {
      const float* kr = static_cast<const float*>(k) + j * d;
      for (int64_t i = 0; i < d; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(kr + i), acc);
    } else {
      const uint16_t* kr = static_cast<const uint16_t*>(k) + j * d;
      for (int64_t i = 0; i < d; i += 16) {
        __m512 kv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kr + i)));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), kv, acc);
      }
    }
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float acc = 0.0f;
  if (t == DType::F32) {
    const float* kr = static_cast<const float*>(k) + j * d;
    for (int64_t i = 0; i < d; ++i) acc += q[i] * kr[i];
  } else {
    const uint16_t* kr = static_cast<const uint16_t*>(k) + j * d;
    for (int64_t i = 0; i < d; ++i) acc += q[i] * f16_to_f32(kr[i]);
  }
  return acc;
}

// out += p * V[j]
inline void axpy_value(float* out, float p, const void* v, int64_t j, int64_t d, DType t) {
#if defined(__AVX512F__)
  if (d % 16 == 0) {
    const __m512 pv = _mm512_set1_ps(p);
    if (t == DType::F32) {
      const float* vr = static_cast<const float*>(v) + j * d;
      for (int64_t i = 0; i < d; i += 16)
        _mm512_storeu_ps(out + i,
                         _mm512_fmadd_ps(pv, _mm512_loadu_ps(vr + i), _mm512_loadu_ps(out + i)));
    } else {
      const uint16_t* vr = static_cast<const uint16_t*>(v) + j * d;
      for (int64_t i = 0; i < d; i += 16) {
        __m512 vv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vr + i)));
        _mm512_storeu_ps(out + i, _mm512_fmadd_ps(pv, vv, _mm512_loadu_ps(out + i)));
      }
    }
    return;
  }
#endif
  if (t == DType::F32) {
    const float* vr = static_cast<const float*>(v) + j * d;
    for (int64_t i = 0; i < d; ++i) out[i] += p * vr[i];
  } else {
    const uint16_t* vr = static_cast<const uint16_t*>(v) + j * d;
    for (int64_t i = 0; i < d; ++i) out[i] += p * f16_to_f32(vr[i]);
  }
}

inline float load_elem(const void* base, int64_t idx, DType t) {
  return t == DType::F32 ? static_cast<const float*>(base)[idx]
                         : f16_to_f32(static_cast<const uint16_t*>(base)[idx]);
}

}  // namespace

void attend_head(const AttentionShape& s, int64_t head, const KeyRun* runs, int n_runs,
                 const void* k, const void* v, float* out, float* scratch, float* probs_out) {
  const int64_t d = s.head_dim;
  const int64_t kvh = head / (s.n_head / s.n_head_kv);
  const size_t es = s.kv_type == DType::F16 ? 2 : 4;
  const auto* kb = static_cast<const std::byte*>(k) + static_cast<size_t>(kvh * s.head_stride) * es;
  const auto* vb = static_cast<const std::byte*>(v) + static_cast<size_t>(kvh * s.head_stride) * es;

  float max_score = -INFINITY;
  int64_t n = 0;
  for (int r = 0; r < n_runs; ++r) {
    const float* q = runs[r].q + head * d;
    for (int32_t j = runs[r].begin; j < runs[r].end; ++j) {
      const float sc = dot_key(q, kb, j, d, s.kv_type) * s.scale;
      scratch[n++] = sc;
      max_score = std::max(max_score, sc);
    }
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    scratch[i] = std::exp(scratch[i] - max_score);
    sum += scratch[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  std::fill(out, out + d, 0.0f);
  n = 0;
  for (int r = 0; r < n_runs; ++r) {
    for (int32_t j = runs[r].begin; j < runs[r].end; ++j) {
      const float p = scratch[n] * inv;
      if (probs_out) probs_out[n] = p;
      ++n;
      axpy_value(out, p, vb, j, d, s.kv_type);
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
