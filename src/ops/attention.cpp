#include "spillway/ops/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kernels.h"
#include "spillway/core/error.h"

namespace spillway::ops {

namespace {

// Element idx of a cache laid out as consecutive elements (F32, F16) or Q8_0 blocks of 32.
// A Q8_0 element is its block's f16 scale times its int8: exact in f32 (11 by 8 bits).
// Loads go through memcpy: caches and test buffers need not be aligned to the element.
inline float load_elem(const void* base, int64_t idx, DType t) {
  const auto* bytes = static_cast<const uint8_t*>(base);
  if (t == DType::F32) {
    float v;
    std::memcpy(&v, bytes + idx * 4, 4);
    return v;
  }
  if (t == DType::F16) {
    uint16_t h;
    std::memcpy(&h, bytes + idx * 2, 2);
    return f16_to_f32(h);
  }
  const auto* b = bytes + (idx / 32) * 34;
  uint16_t d;
  std::memcpy(&d, b, 2);
  return f16_to_f32(d) * static_cast<float>(static_cast<int8_t>(b[2 + idx % 32]));
}

// The parts of the runs that fall in positions [n0, n1) of their concatenation, into
// `out` (at most n1 - n0 entries); returns how many.
int clip_runs(const KeyRun* runs, int n_runs, int64_t n0, int64_t n1, KeyRun* out) {
  int n = 0;
  int64_t base = 0;
  for (int r = 0; r < n_runs && base < n1; ++r) {
    const int64_t len = runs[r].end - runs[r].begin;
    const int64_t lo = std::max(n0, base), hi = std::min(n1, base + len);
    if (lo < hi) {
      out[n++] = {static_cast<int32_t>(runs[r].begin + (lo - base)),
                  static_cast<int32_t>(runs[r].begin + (hi - base)), runs[r].q};
    }
    base += len;
  }
  return n;
}

}  // namespace

// Plain-loop piece: the reference of the SIMD pieces.
void detail::attend_piece_scalar(const AttentionShape& s, int64_t kv_head, const KeyRun* sub,
                                 int n_sub, int64_t, const void* k, const void* v, float* part) {
  const int64_t d = s.head_dim;
  const int64_t G = s.n_head / s.n_head_kv;
  const int64_t head = kv_head * s.head_stride;
  float sc[kAttnPiece];
  for (int64_t g = 0; g < G; ++g) {
    float m = -INFINITY;
    int64_t n = 0;
    for (int r = 0; r < n_sub; ++r) {
      const float* q = sub[r].q + (kv_head * G + g) * d;
      for (int32_t j = sub[r].begin; j < sub[r].end; ++j, ++n) {
        float acc = 0.0f;
        for (int64_t i = 0; i < d; ++i) acc += q[i] * load_elem(k, head + j * d + i, s.kv_type);
        sc[n] = acc * s.scale;
        m = std::max(m, sc[n]);
      }
    }
    float l = 0.0f;
    for (int64_t i = 0; i < n; ++i) l += (sc[i] = std::exp(sc[i] - m));
    float* a = part + 2 * G + g * d;
    std::fill(a, a + d, 0.0f);
    n = 0;
    for (int r = 0; r < n_sub; ++r) {
      for (int32_t j = sub[r].begin; j < sub[r].end; ++j, ++n) {
        for (int64_t i = 0; i < d; ++i) a[i] += sc[n] * load_elem(v, head + j * d + i, s.kv_type);
      }
    }
    part[g] = m;
    part[G + g] = l;
  }
}

void detail::attend_piece_with(const Kernels& ks, const AttentionShape& s, int64_t kv_head,
                               const KeyRun* runs, int n_runs, int64_t n0, int64_t n1,
                               const void* k, const void* v, float* part) {
  if (n0 < 0 || n1 <= n0 || n1 - n0 > kAttnPiece) {
    throw InvalidArgument(
        fmt::format("attend_piece: bad key range [{}, {}) (at most {} keys)", n0, n1, kAttnPiece));
  }
  if (s.kv_type != DType::F32 && s.kv_type != DType::F16 &&
      (s.kv_type != DType::Q8_0 || s.head_dim % 32 != 0 || s.head_stride % 32 != 0)) {
    throw InvalidArgument(fmt::format(
        "attend_piece: KV type {} with head size {}, head stride {} (f32, f16, or q8_0 with "
        "both multiples of 32)",
        dtype_name(s.kv_type), s.head_dim, s.head_stride));
  }
  KeyRun sub[kAttnPiece];
  const int n_sub = clip_runs(runs, n_runs, n0, n1, sub);
  int64_t total = 0;
  for (int r = 0; r < n_sub; ++r) total += sub[r].end - sub[r].begin;
  if (total != n1 - n0) {
    throw InvalidArgument(
        fmt::format("attend_piece: key range [{}, {}) lies beyond the runs "
                    "({} keys in it)",
                    n0, n1, total));
  }
  if (s.head_dim % ks.attend_dim_multiple == 0) {
    ks.attend_piece(s, kv_head, sub, n_sub, total, k, v, part);
  } else {
    detail::attend_piece_scalar(s, kv_head, sub, n_sub, total, k, v, part);
  }
}

void attend_piece(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  int64_t n0, int64_t n1, const void* k, const void* v, float* part) {
  detail::attend_piece_with(detail::kernels(), s, kv_head, runs, n_runs, n0, n1, k, v, part);
}

void attend_merge(const AttentionShape& s, int64_t kv_head, const float* parts, int64_t n_pieces,
                  float* out, const float* sink_logit, const float* sink_value) {
  const int64_t d = s.head_dim;
  const int64_t G = s.n_head / s.n_head_kv;
  const int64_t pf = attention_part_floats(s);
  for (int64_t g = 0; g < G; ++g) {
    float m = -INFINITY;
    for (int64_t p = 0; p < n_pieces; ++p) m = std::max(m, parts[p * pf + g]);
    // A virtual sink joins the softmax with its logit and no value: it raises the max
    // (when larger) and adds exp(z - max) to the sum.
    const float z = sink_logit ? sink_logit[kv_head * G + g] : -INFINITY;
    const bool sink = z > -INFINITY;
    if (sink) m = std::max(m, z);
    double l = sink ? static_cast<double>(std::exp(z - m)) : 0.0;
    for (int64_t p = 0; p < n_pieces; ++p) {
      l += static_cast<double>(parts[p * pf + G + g]) * std::exp(parts[p * pf + g] - m);
    }
    float* o = out + (kv_head * G + g) * d;
    std::fill(o, o + d, 0.0f);
    for (int64_t p = 0; p < n_pieces; ++p) {
      const auto w = static_cast<float>(std::exp(parts[p * pf + g] - m) / l);
      const float* a = parts + p * pf + 2 * G + g * d;
      for (int64_t i = 0; i < d; ++i) o[i] += w * a[i];
    }
    // The sink's value, last: a value-less sink (no sink_value) keeps the bits it had
    // before sinks could carry one.
    if (sink && sink_value) {
      const auto w = static_cast<float>(std::exp(z - m) / l);
      const float* u = sink_value + (kv_head * G + g) * d;
      for (int64_t i = 0; i < d; ++i) o[i] += w * u[i];
    }
  }
}

namespace {

// Every piece of `runs` into parts (attention_pieces(keys) of them); returns how many.
// `what` names the caller in the error for runs without keys.
int64_t pieces_of(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  const void* k, const void* v, float* parts, const char* what) {
  int64_t total = 0;
  for (int r = 0; r < n_runs; ++r) total += runs[r].end - runs[r].begin;
  if (total <= 0) throw InvalidArgument(fmt::format("{}: no keys to attend to", what));
  const int64_t n_pieces = attention_pieces(total), pf = attention_part_floats(s);
  for (int64_t p = 0; p < n_pieces; ++p)
    attend_piece(s, kv_head, runs, n_runs, p * kAttnPiece, std::min(total, (p + 1) * kAttnPiece), k,
                 v, parts + p * pf);
  return n_pieces;
}

}  // namespace

void attend_group(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                  const void* k, const void* v, float* out, float* scratch, float* probs_out,
                  const float* sink_logit, const float* sink_value) {
  const int64_t n_pieces = pieces_of(s, kv_head, runs, n_runs, k, v, scratch, "attend_group");
  attend_merge(s, kv_head, scratch, n_pieces, out, sink_logit, sink_value);
  if (probs_out != nullptr) attention_probs(s, kv_head, runs, n_runs, k, probs_out);
}

namespace {

// Head g's max score and sum of exp(score - max) over n pieces.
std::pair<double, double> max_and_sum(const float* parts, int64_t n, int64_t G, int64_t pf,
                                      int64_t g) {
  double m = -INFINITY, z = 0;
  for (int64_t p = 0; p < n; ++p) m = std::max<double>(m, parts[p * pf + g]);
  for (int64_t p = 0; p < n; ++p)
    z += static_cast<double>(parts[p * pf + G + g]) * std::exp(parts[p * pf + g] - m);
  return {m, z};
}

// Head g's exp-weighted value sum, element i, relative to m.
double value_sum(const float* parts, int64_t n, int64_t G, int64_t pf, int64_t d, int64_t g,
                 double m, int64_t i) {
  double a = 0;
  for (int64_t p = 0; p < n; ++p)
    a += std::exp(parts[p * pf + g] - m) * parts[p * pf + 2 * G + g * d + i];
  return a;
}

}  // namespace

void attend_split(const AttentionShape& s, int64_t kv_head, const KeyRun* window, int n_window,
                  const KeyRun* sinks, int n_sinks, const void* k, const void* v,
                  const SinkSplit* modes, const float* logits, float* out, float* scratch) {
  const int64_t d = s.head_dim, G = s.n_head / s.n_head_kv, pf = attention_part_floats(s);
  const int64_t nw =
      pieces_of(s, kv_head, window, n_window, k, v, scratch, "attend_split (window)");
  float* sink_parts = scratch + nw * pf;
  const int64_t ns =
      pieces_of(s, kv_head, sinks, n_sinks, k, v, sink_parts, "attend_split (sinks)");
  for (int64_t g = 0; g < G; ++g) {
    const int64_t h = kv_head * G + g;
    const SinkSplit mode = modes[h];
    if (mode == SinkSplit::kNone) continue;
    const auto [mw, zw0] = max_and_sum(scratch, nw, G, pf, g);
    const auto [ms, zs0] = max_and_sum(sink_parts, ns, G, pf, g);
    // The window's sum zw and the sinks' zs (or the logit's exp) relative to the larger of
    // their maxima, so that neither overflows and their sum is at least 1; o_w from the
    // window's own sums (zw0 is at least 1 too).
    const bool logit = mode == SinkSplit::kLogit;
    const double c = logit ? static_cast<double>(logits[h]) : -INFINITY;
    const double m = std::max(mw, logit ? c : ms);
    const double zw = zw0 * std::exp(mw - m);
    const double zs = logit ? std::exp(c - m) : zs0 * std::exp(ms - m);
    const double keep = zw / (zw + zs);  // 1 - p: the window's share
    float* o = out + h * d;
    for (int64_t i = 0; i < d; ++i) {
      const double ow = value_sum(scratch, nw, G, pf, d, g, mw, i) / zw0;
      double x = keep * ow;
      if (mode == SinkSplit::kValues)
        x = ow + value_sum(sink_parts, ns, G, pf, d, g, m, i) / (zw + zs);
      o[i] = static_cast<float>(x);
    }
  }
}

void attention_probs(const AttentionShape& s, int64_t kv_head, const KeyRun* runs, int n_runs,
                     const void* k, float* probs, double* lse) {
  const int64_t d = s.head_dim;
  const int64_t G = s.n_head / s.n_head_kv;
  int64_t total = 0;
  for (int r = 0; r < n_runs; ++r) total += runs[r].end - runs[r].begin;
  for (int64_t g = 0; g < G; ++g) {
    float* pg = probs + g * total;
    double m = -INFINITY;
    int64_t n = 0;
    for (int r = 0; r < n_runs; ++r) {
      const float* q = runs[r].q + (kv_head * G + g) * d;
      for (int32_t j = runs[r].begin; j < runs[r].end; ++j, ++n) {
        double acc = 0.0;
        for (int64_t i = 0; i < d; ++i) {
          acc += static_cast<double>(q[i]) *
                 load_elem(k, kv_head * s.head_stride + j * d + i, s.kv_type);
        }
        acc *= s.scale;
        pg[n] = static_cast<float>(acc);
        m = std::max(m, acc);
      }
    }
    double sum = 0.0;
    for (int64_t i = 0; i < total; ++i) sum += std::exp(static_cast<double>(pg[i]) - m);
    for (int64_t i = 0; i < total; ++i) {
      pg[i] = static_cast<float>(std::exp(static_cast<double>(pg[i]) - m) / sum);
    }
    if (lse) lse[g] = m + std::log(sum);
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
