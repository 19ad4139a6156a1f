#include "spillway/ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "ops/kernels.h"
#include "spillway/core/error.h"
#include "spillway/core/quant.h"
#include "spillway/ops/matmul.h"
#include "util/families.h"

namespace spillway::ops {
namespace {

// The cache of type t holding f32 values f[0, n) (ggml's rounding for f16 and Q8_0), placed
// `skew` bytes past its allocation's start (kernels may not rely on alignment).
struct CacheBuf {
  std::vector<uint8_t> bytes;
  size_t skew = 0;
  const void* data() const { return bytes.data() + skew; }
};
CacheBuf make_cache(DType t, const float* f, size_t n, size_t skew) {
  CacheBuf c;
  c.skew = skew;
  c.bytes.resize(skew + *row_bytes(t, n));
  quantize_row_ref(t, f, c.bytes.data() + skew, static_cast<int64_t>(n));
  return c;
}

// The KV types a head size admits (Q8_0 needs whole blocks of 32 per row).
std::vector<DType> kv_types_for(int64_t head_dim) {
  if (head_dim % 32 == 0) return {DType::F32, DType::F16, DType::Q8_0};
  return {DType::F32, DType::F16};
}

TEST(Attention, GroupKernelMatchesReferenceOnRandomRuns) {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto [n_head, n_head_kv, head_dim] :
       {std::tuple{9, 3, 64}, std::tuple{12, 2, 16}, std::tuple{4, 4, 8}, std::tuple{6, 1, 12},
        std::tuple{6, 2, 96}}) {
    for (DType kv_type : kv_types_for(head_dim)) {
      SCOPED_TRACE(::testing::Message() << dtype_name(kv_type) << " dim " << head_dim);
      const int64_t n_slots = 257;
      const size_t n = static_cast<size_t>(n_head_kv * n_slots * head_dim);
      // Every buffer one element off its allocation's alignment: kernels may not rely on it.
      std::vector<float> kf_buf(n + 1), vf_buf(n + 1);
      float* kf = kf_buf.data() + 1;
      float* vf = vf_buf.data() + 1;
      for (size_t i = 0; i < n; ++i) kf[i] = nd(rng) * 2.0f;
      for (size_t i = 0; i < n; ++i) vf[i] = nd(rng);
      const CacheBuf kc = make_cache(kv_type, kf, n, 3), vc = make_cache(kv_type, vf, n, 5);
      const void* k = kv_type == DType::F32 ? static_cast<const void*>(kf) : kc.data();
      const void* v = kv_type == DType::F32 ? static_cast<const void*>(vf) : vc.data();
      // Two query copies (as for sink and window runs), three runs incl. a wrapped one.
      const size_t qn = static_cast<size_t>(n_head * head_dim);
      std::vector<float> q_buf(2 * qn + 1);
      float* q1 = q_buf.data() + 1;
      float* q2 = q1 + qn;
      for (size_t i = 0; i < 2 * qn; ++i) q1[i] = nd(rng);
      const KeyRun runs[3] = {{0, 4, q1}, {200, 257, q2}, {7, 101, q2}};
      AttentionShape s{n_head,   n_head_kv,
                       head_dim, n_slots * head_dim,
                       kv_type,  1.0f / std::sqrt(static_cast<float>(head_dim))};
      std::vector<float> out(static_cast<size_t>(n_head * head_dim));
      const int64_t total = 4 + 57 + 94;
      std::vector<float> scratch(
          static_cast<size_t>(attention_pieces(total) * attention_part_floats(s)));
      std::vector<float> probs(static_cast<size_t>(total * n_head / n_head_kv));
      for (int64_t g = 0; g < n_head_kv; ++g) {
        attend_group(s, g, runs, 3, k, v, out.data(), scratch.data(), probs.data());
        for (int64_t j = 0; j < n_head / n_head_kv; ++j) {
          double psum = 0;
          for (int64_t i = 0; i < total; ++i) psum += probs[static_cast<size_t>(j * total + i)];
          EXPECT_NEAR(psum, 1.0, 1e-5);
        }
      }
      std::vector<float> want(static_cast<size_t>(head_dim));
      for (int64_t h = 0; h < n_head; ++h) {
        attend_head_ref(s, h, runs, 3, k, v, want.data());
        for (int64_t i = 0; i < head_dim; ++i)
          EXPECT_NEAR(out[static_cast<size_t>(h * head_dim + i)], want[static_cast<size_t>(i)],
                      2e-5)
              << "head " << h << " dim " << i;
      }
    }
  }
}

// Chunked evaluation and decode see a token's keys cut into runs at different places (ring
// wrap, sink boundary): the result must depend only on the keys and their order.
TEST(Attention, WhereRunsBreakDoesNotChangeTheBits) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto [n_head, n_head_kv, head_dim] :
       {std::tuple{9, 3, 64}, std::tuple{4, 2, 128}, std::tuple{8, 1, 32}, std::tuple{6, 2, 12}}) {
    for (DType kv_type : kv_types_for(head_dim)) {
      const int64_t n_slots = 300;
      const size_t n = static_cast<size_t>(n_head_kv * n_slots * head_dim);
      std::vector<float> kf(n), vf(n);
      for (auto& x : kf) x = nd(rng);
      for (auto& x : vf) x = nd(rng);
      const CacheBuf kc = make_cache(kv_type, kf.data(), n, 0),
                     vc = make_cache(kv_type, vf.data(), n, 0);
      const void* k = kc.data();
      const void* v = vc.data();
      std::vector<float> q(static_cast<size_t>(n_head * head_dim));
      for (auto& x : q) x = nd(rng);
      const AttentionShape s{n_head,   n_head_kv,
                             head_dim, n_slots * head_dim,
                             kv_type,  1.0f / std::sqrt(static_cast<float>(head_dim))};
      const KeyRun whole[1] = {{3, 290, q.data()}};
      const KeyRun cut[5] = {{3, 4, q.data()},
                             {4, 41, q.data()},
                             {41, 130, q.data()},
                             {130, 133, q.data()},
                             {133, 290, q.data()}};
      std::vector<float> scratch(
          static_cast<size_t>(attention_pieces(287) * attention_part_floats(s)));
      std::vector<float> a(q.size()), b(q.size());
      for (int64_t g = 0; g < n_head_kv; ++g) {
        attend_group(s, g, whole, 1, k, v, a.data(), scratch.data());
        attend_group(s, g, cut, 5, k, v, b.data(), scratch.data());
      }
      EXPECT_EQ(a, b) << dtype_name(kv_type) << " heads " << n_head << "/" << n_head_kv << " dim "
                      << head_dim;
      // And the result is right.
      std::vector<float> want(static_cast<size_t>(head_dim));
      for (int64_t h = 0; h < n_head; ++h) {
        attend_head_ref(s, h, whole, 1, k, v, want.data());
        for (int64_t i = 0; i < head_dim; ++i)
          ASSERT_NEAR(a[static_cast<size_t>(h * head_dim + i)], want[static_cast<size_t>(i)], 2e-5);
      }
    }
  }
}

TEST(Attention, PieceRangesAreChecked) {
  std::vector<float> kv(64, 0.5f), q(64, 1.0f), part(66);
  const AttentionShape s{1, 1, 64, 64, DType::F32, 0.125f};
  const KeyRun run[1] = {{0, 1, q.data()}};
  EXPECT_THROW(attend_piece(s, 0, run, 1, 0, 2, kv.data(), kv.data(), part.data()),
               InvalidArgument);
  EXPECT_THROW(attend_piece(s, 0, run, 1, 0, kAttnPiece + 1, kv.data(), kv.data(), part.data()),
               InvalidArgument);
  EXPECT_THROW(attend_piece(s, 0, run, 1, 1, 1, kv.data(), kv.data(), part.data()),
               InvalidArgument);
  attend_piece(s, 0, run, 1, 0, 1, kv.data(), kv.data(), part.data());
  EXPECT_EQ(part[1], 1.0f);  // sum of exp(score - max) over one key
  EXPECT_EQ(part[2], 0.5f);  // its value
  // Q8_0 rows are whole blocks of 32; other quantized types are no KV types.
  const AttentionShape q8_48{1, 1, 48, 48, DType::Q8_0, 0.125f};
  EXPECT_THROW(attend_piece(q8_48, 0, run, 1, 0, 1, kv.data(), kv.data(), part.data()),
               InvalidArgument);
  const AttentionShape q4{1, 1, 64, 64, DType::Q4_0, 0.125f};
  EXPECT_THROW(attend_piece(q4, 0, run, 1, 0, 1, kv.data(), kv.data(), part.data()),
               InvalidArgument);
}

// One group with one family's piece kernel: pieces, then the common merge.
void group_with(const detail::Kernels& ks, const AttentionShape& s, int64_t kv_head,
                const KeyRun* runs, int n_runs, const void* k, const void* v, float* out) {
  int64_t total = 0;
  for (int r = 0; r < n_runs; ++r) total += runs[r].end - runs[r].begin;
  const int64_t n_pieces = attention_pieces(total), pf = attention_part_floats(s);
  std::vector<float> parts(static_cast<size_t>(n_pieces * pf));
  for (int64_t p = 0; p < n_pieces; ++p) {
    detail::attend_piece_with(ks, s, kv_head, runs, n_runs, p * kAttnPiece,
                              std::min(total, (p + 1) * kAttnPiece), k, v, parts.data() + p * pf);
  }
  attend_merge(s, kv_head, parts.data(), n_pieces, out);
}

// Every family's pieces against the scalar family's and the double reference: f32, f16
// and q8_0 caches; head sizes of one and several vectors and ones a family's kernel does not take
// (it falls back to the scalar piece); groups of 1 to 6 heads (slices of 4 and the rest);
// spans of 1 key to several pieces, with runs that break inside blocks of 4 keys; and the
// bits must not depend on where the runs break.
void expect_pieces_match_scalar(KernelIsa isa) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const detail::Kernels& ks = detail::kernels_for(isa);
  const detail::Kernels& sc = detail::kernels_for(KernelIsa::kScalar);
  for (auto [n_head, n_head_kv, head_dim] :
       {std::tuple{9, 3, 64}, std::tuple{4, 1, 256}, std::tuple{8, 4, 128}, std::tuple{3, 1, 128},
        std::tuple{5, 1, 32}, std::tuple{6, 2, 96}, std::tuple{2, 2, 48}, std::tuple{6, 1, 16},
        std::tuple{1, 1, 8}}) {
    for (DType kv_type : kv_types_for(head_dim)) {
      for (int64_t span : {1, 3, 17, 128, 131, 300}) {
        SCOPED_TRACE(::testing::Message()
                     << isa_name(isa) << " " << dtype_name(kv_type) << " heads " << n_head << "/"
                     << n_head_kv << " dim " << head_dim << " span " << span);
        const int64_t n_slots = span + 5;
        const size_t n = static_cast<size_t>(n_head_kv * n_slots * head_dim);
        std::vector<float> kf(n + 1), vf(n + 1);
        for (auto& x : kf) x = nd(rng) * 2.0f;
        for (auto& x : vf) x = nd(rng);
        // One element (f32) or one byte off alignment.
        const CacheBuf kc = make_cache(kv_type, kf.data() + 1, n, 1),
                       vc = make_cache(kv_type, vf.data() + 1, n, 1);
        const void* k = kv_type == DType::F32 ? static_cast<const void*>(kf.data() + 1) : kc.data();
        const void* v = kv_type == DType::F32 ? static_cast<const void*>(vf.data() + 1) : vc.data();
        std::vector<float> q(static_cast<size_t>(n_head * head_dim) + 1);
        for (auto& x : q) x = nd(rng);
        const float* qp = q.data() + 1;
        const AttentionShape s{n_head,   n_head_kv,
                               head_dim, n_slots * head_dim,
                               kv_type,  1.0f / std::sqrt(static_cast<float>(head_dim))};
        const int32_t b0 = 2, b1 = static_cast<int32_t>(2 + span);
        const KeyRun whole[1] = {{b0, b1, qp}};
        const int32_t cut1 = b0 + static_cast<int32_t>(span / 3), cut2 = cut1 + (span > 6 ? 5 : 0);
        const KeyRun cut[3] = {{b0, cut1, qp}, {cut1, cut2, qp}, {cut2, b1, qp}};
        std::vector<float> out(q.size() - 1), out_cut(out.size()), ref(out.size());
        for (int64_t g = 0; g < n_head_kv; ++g) {
          group_with(ks, s, g, whole, 1, k, v, out.data());
          group_with(ks, s, g, cut, 3, k, v, out_cut.data());
          group_with(sc, s, g, whole, 1, k, v, ref.data());
        }
        ASSERT_EQ(std::memcmp(out.data(), out_cut.data(), out.size() * sizeof(float)), 0)
            << "where the runs break changed the bits";
        std::vector<float> want(static_cast<size_t>(head_dim));
        for (int64_t h = 0; h < n_head; ++h) {
          attend_head_ref(s, h, whole, 1, k, v, want.data());
          for (int64_t i = 0; i < head_dim; ++i) {
            const size_t o = static_cast<size_t>(h * head_dim + i);
            ASSERT_NEAR(out[o], ref[o], 2e-5) << "vs scalar, head " << h << " dim " << i;
            ASSERT_NEAR(out[o], want[static_cast<size_t>(i)], 2e-5)
                << "vs reference, head " << h << " dim " << i;
          }
        }
      }
    }
  }
}

// One query head with a virtual sink of logit z and value u, or one whose keys are split
// into window slots [w0, w1) and sink slots [s0, s1) and recombined as `mode` says: the
// equations in double, written out (f32 cache).
std::vector<double> sink_ref(const AttentionShape& s, int64_t head, const float* q, const float* k,
                             const float* v, int32_t w0, int32_t w1, int32_t s0, int32_t s1,
                             SinkSplit mode, double z, const float* u) {
  const int64_t d = s.head_dim, kvh = head / (s.n_head / s.n_head_kv);
  const auto sum = [&](int32_t a, int32_t b, double m, std::vector<double>* acc) {
    double l = 0;
    for (int32_t j = a; j < b; ++j) {
      double x = 0;
      for (int64_t i = 0; i < d; ++i)
        x += double(q[head * d + i]) * k[kvh * s.head_stride + j * d + i];
      const double e = std::exp(x * s.scale - m);
      l += e;
      for (int64_t i = 0; i < d; ++i) (*acc)[i] += e * v[kvh * s.head_stride + j * d + i];
    }
    return l;
  };
  std::vector<double> aw(d, 0.0), as(d, 0.0), out(d, 0.0);
  const double m = 8.0;  // any reference point: scores here are a few units
  const double zw = sum(w0, w1, m, &aw), zs = sum(s0, s1, m, &as);
  for (int64_t i = 0; i < d; ++i) {
    const double ow = aw[i] / zw;
    switch (mode) {
      case SinkSplit::kKeys:
        out[i] = aw[i] / (zw + zs);
        break;
      case SinkSplit::kValues:
        out[i] = ow + as[i] / (zw + zs);
        break;
      case SinkSplit::kLogit:
        out[i] = aw[i] / (zw + std::exp(z - m));
        break;
      default: {  // the window with a virtual sink (z, u); u null: value-less
        const double e = std::exp(z - m);
        out[i] = (aw[i] + (u ? e * u[head * d + i] : 0.0)) / (zw + e);
      }
    }
  }
  return out;
}

// A virtual sink with a value, and the sink splits of the analyses, in one family: the
// family's pieces with the common merge against the equations; a value-less sink and a
// zero value give the same bits.
void expect_sinks_match_reference(KernelIsa isa) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const detail::Kernels& ks = detail::kernels_for(isa);
  for (auto [n_head, n_head_kv, head_dim] :
       {std::tuple{9, 3, 64}, std::tuple{4, 1, 256}, std::tuple{6, 2, 96}, std::tuple{2, 1, 12}}) {
    for (int64_t window : {1, 7, 200}) {
      SCOPED_TRACE(::testing::Message() << isa_name(isa) << " heads " << n_head << "/" << n_head_kv
                                        << " dim " << head_dim << " window " << window);
      const int64_t sinks = 4, n_slots = sinks + window;
      const size_t n = static_cast<size_t>(n_head_kv * n_slots * head_dim);
      std::vector<float> k(n), v(n), q(static_cast<size_t>(n_head * head_dim));
      for (auto& x : k) x = nd(rng) * 1.5f;
      for (auto& x : v) x = nd(rng);
      for (auto& x : q) x = nd(rng);
      std::vector<float> z(static_cast<size_t>(n_head)), u(q.size()), zero(q.size(), 0.0f);
      for (auto& x : z) x = nd(rng) * 2.0f;
      z[0] = -INFINITY;  // a head without a sink
      for (auto& x : u) x = nd(rng) * 3.0f;
      const AttentionShape s{n_head,     n_head_kv,
                             head_dim,   n_slots * head_dim,
                             DType::F32, 1.0f / std::sqrt(static_cast<float>(head_dim))};
      const KeyRun win[1] = {
          {static_cast<int32_t>(sinks), static_cast<int32_t>(n_slots), q.data()}};
      const KeyRun snk[1] = {{0, static_cast<int32_t>(sinks), q.data()}};
      const int64_t pf = attention_part_floats(s);
      const int64_t n_pieces = attention_pieces(window);
      std::vector<float> parts(static_cast<size_t>((n_pieces + 1) * pf));
      std::vector<float> with_value(q.size()), no_value(q.size()), zero_value(q.size());
      for (int64_t g = 0; g < n_head_kv; ++g) {
        for (int64_t p = 0; p < n_pieces; ++p)
          detail::attend_piece_with(ks, s, g, win, 1, p * kAttnPiece,
                                    std::min(window, (p + 1) * kAttnPiece), k.data(), v.data(),
                                    parts.data() + p * pf);
        attend_merge(s, g, parts.data(), n_pieces, with_value.data(), z.data(), u.data());
        attend_merge(s, g, parts.data(), n_pieces, no_value.data(), z.data());
        attend_merge(s, g, parts.data(), n_pieces, zero_value.data(), z.data(), zero.data());
      }
      ASSERT_EQ(std::memcmp(no_value.data(), zero_value.data(), q.size() * sizeof(float)), 0)
          << "a zero value changed the bits of a value-less sink";
      for (int64_t h = 0; h < n_head; ++h) {
        const auto want = sink_ref(s, h, q.data(), k.data(), v.data(), sinks, n_slots, 0, 0,
                                   SinkSplit::kNone, z[h], u.data());
        const auto want0 = sink_ref(s, h, q.data(), k.data(), v.data(), sinks, n_slots, 0, 0,
                                    SinkSplit::kNone, z[h], nullptr);
        for (int64_t i = 0; i < head_dim; ++i) {
          ASSERT_NEAR(with_value[h * head_dim + i], want[i], 2e-5) << "head " << h << " dim " << i;
          ASSERT_NEAR(no_value[h * head_dim + i], want0[i], 2e-5) << "head " << h << " dim " << i;
        }
      }
      // The splits, through the family's kernels (attend_split runs kernels(): this family
      // when it is the one chosen, which SPILLWAY_ISA selects; the pieces are checked above).
      for (SinkSplit mode : {SinkSplit::kKeys, SinkSplit::kValues, SinkSplit::kLogit}) {
        std::vector<SinkSplit> modes(static_cast<size_t>(n_head), mode);
        modes[1] = SinkSplit::kNone;  // left alone
        std::vector<float> out(q.size(), 7.0f);
        std::vector<float> scratch(static_cast<size_t>((n_pieces + 1) * pf));
        for (int64_t g = 0; g < n_head_kv; ++g)
          attend_split(s, g, win, 1, snk, 1, k.data(), v.data(), modes.data(), u.data(), out.data(),
                       scratch.data());
        for (int64_t h = 0; h < n_head; ++h) {
          if (h == 1) {
            for (int64_t i = 0; i < head_dim; ++i) ASSERT_EQ(out[h * head_dim + i], 7.0f);
            continue;
          }
          const auto want = sink_ref(s, h, q.data(), k.data(), v.data(), sinks, n_slots, 0, sinks,
                                     mode, u[h], nullptr);
          for (int64_t i = 0; i < head_dim; ++i)
            ASSERT_NEAR(out[h * head_dim + i], want[i], 2e-5)
                << "split " << static_cast<int>(mode) << " head " << h << " dim " << i;
        }
      }
    }
  }
}

class AttentionFamily : public ::testing::TestWithParam<KernelIsa> {};

TEST_P(AttentionFamily, PiecesMatchScalar) {
  SPILLWAY_SKIP_UNLESS_RUNS(GetParam());
  expect_pieces_match_scalar(GetParam());
}

TEST_P(AttentionFamily, SinkValuesAndSplitsMatchTheEquations) {
  SPILLWAY_SKIP_UNLESS_RUNS(GetParam());
  expect_sinks_match_reference(GetParam());
}

TEST(Attention, SinkValuesAndSplitsMatchTheEquationsInTheScalarFamily) {
  expect_sinks_match_reference(KernelIsa::kScalar);
}

INSTANTIATE_TEST_SUITE_P(EveryFamily, AttentionFamily, ::testing::ValuesIn(test::simd_families()),
                         test::FamilyName());

}  // namespace
}  // namespace spillway::ops
