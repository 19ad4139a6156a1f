#include "spillway/ops/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

namespace spillway::ops {
namespace {

TEST(Attention, GroupKernelMatchesReferenceOnRandomRuns) {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (DType kv_type : {DType::F32, DType::F16}) {
    for (auto [n_head, n_head_kv, head_dim] :
         {std::tuple{9, 3, 64}, std::tuple{12, 2, 16}, std::tuple{4, 4, 8}, std::tuple{6, 1, 12}}) {
      const int64_t n_slots = 257;
      const size_t n = static_cast<size_t>(n_head_kv * n_slots * head_dim);
      std::vector<float> kf(n), vf(n);
      for (auto& x : kf) x = nd(rng) * 2.0f;
      for (auto& x : vf) x = nd(rng);
      std::vector<uint16_t> kh(n), vh(n);
      for (size_t i = 0; i < n; ++i) {
        kh[i] = f32_to_f16(kf[i]);
        vh[i] = f32_to_f16(vf[i]);
      }
      const void* k = kv_type == DType::F32 ? static_cast<const void*>(kf.data()) : kh.data();
      const void* v = kv_type == DType::F32 ? static_cast<const void*>(vf.data()) : vh.data();
      // Two query copies (as for sink and window runs), three runs incl. a wrapped one.
      std::vector<float> q1(static_cast<size_t>(n_head * head_dim)), q2(q1.size());
      for (auto& x : q1) x = nd(rng);
      for (auto& x : q2) x = nd(rng);
      const KeyRun runs[3] = {{0, 4, q1.data()}, {200, 257, q2.data()}, {7, 101, q2.data()}};
      AttentionShape s{n_head,   n_head_kv,
                       head_dim, n_slots * head_dim,
                       kv_type,  1.0f / std::sqrt(static_cast<float>(head_dim))};
      std::vector<float> out(static_cast<size_t>(n_head * head_dim));
      const int64_t total = 4 + 57 + 94;
      std::vector<float> scratch(static_cast<size_t>(total * n_head / n_head_kv));
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

}  // namespace
}  // namespace spillway::ops
