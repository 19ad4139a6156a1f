// The sampler chain against a straightforward reference written from its definition in
// generate.h (penalize a copy, sort the whole vocabulary, cut, draw): the same token
// sequences for many seeds and settings. Both take probabilities from ops::softmax over
// the same array, so the comparison is exact: it checks the partial selection.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <numeric>
#include <random>
#include <set>

#include "spillway/core/error.h"
#include "spillway/ops/ops.h"
#include "spillway/session/generate.h"

namespace spillway {
namespace {

class ReferenceSampler {
 public:
  explicit ReferenceSampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}
  void accept(TokenId id) {
    recent_.push_back(id);
    while (static_cast<int>(recent_.size()) > p_.repeat_last_n) recent_.pop_front();
  }

  TokenId sample(const float* logits, int64_t n) {
    std::vector<float> z(logits, logits + n);
    if (p_.repeat_penalty != 1.0f)
      for (TokenId t : std::set<TokenId>(recent_.begin(), recent_.end()))
        z[t] = z[t] > 0 ? z[t] / p_.repeat_penalty : z[t] * p_.repeat_penalty;
    if (p_.temperature == 0.0f)
      return static_cast<TokenId>(std::max_element(z.begin(), z.end()) - z.begin());
    std::vector<float> x(z.size());
    for (int64_t i = 0; i < n; ++i) x[i] = z[i] / p_.temperature;
    std::vector<TokenId> ids(static_cast<size_t>(n));
    std::iota(ids.begin(), ids.end(), 0);
    std::vector<float> prob(static_cast<size_t>(n), 0.0f);
    if (p_.top_k > 0 && p_.top_k < n) {
      std::sort(ids.begin(), ids.end(),
                [&](TokenId a, TokenId b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
      ids.resize(static_cast<size_t>(p_.top_k));
      std::vector<float> v;
      for (TokenId t : ids) v.push_back(x[t]);
      ops::softmax(v.data(), static_cast<int64_t>(v.size()));
      for (size_t j = 0; j < ids.size(); ++j) prob[ids[j]] = v[j];
    } else {
      prob = x;
      ops::softmax(prob.data(), n);
    }
    std::sort(ids.begin(), ids.end(), [&](TokenId a, TokenId b) {
      return prob[a] > prob[b] || (prob[a] == prob[b] && a < b);
    });
    if (p_.top_p < 1.0f) {
      double cum = 0;
      for (size_t j = 0; j < ids.size(); ++j) {
        cum += prob[ids[j]];
        if (cum >= p_.top_p) {
          ids.resize(j + 1);
          break;
        }
      }
    }
    if (p_.min_p > 0.0f) {
      const float floor = p_.min_p * prob[ids[0]];
      ids.erase(std::remove_if(ids.begin(), ids.end(), [&](TokenId t) { return prob[t] < floor; }),
                ids.end());
    }
    std::sort(ids.begin(), ids.end());
    double sum = 0;
    for (TokenId t : ids) sum += prob[t];
    std::uniform_real_distribution<double> u(0.0, sum);
    double r = u(rng_);
    for (TokenId t : ids) {
      r -= prob[t];
      if (r <= 0) return t;
    }
    return ids.back();
  }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::deque<TokenId> recent_;
};

// Logits shaped like a language model's: a few strong candidates over a long tail, with
// repeated values (ties) and a temperature-dependent spread.
std::vector<float> fake_logits(int64_t n, std::mt19937& rng, float spread) {
  std::normal_distribution<float> nd(0.0f, spread);
  std::vector<float> l(static_cast<size_t>(n));
  for (float& x : l) x = std::round(nd(rng) * 64.0f) / 64.0f;  // coarse: ties happen
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  for (int i = 0; i < 12; ++i) l[static_cast<size_t>(pick(rng))] += 6.0f + static_cast<float>(i);
  return l;
}

TEST(Sampler, FastPathEqualsTheFullSortReference) {
  const int64_t n = 5003;
  struct Setting {
    float temp;
    int top_k;
    float top_p, min_p, penalty;
    int last_n;
  };
  const Setting settings[] = {
      {0.7f, 0, 0.9f, 0.0f, 1.0f, 64},    {1.0f, 0, 1.0f, 0.0f, 1.0f, 64},
      {0.8f, 40, 1.0f, 0.0f, 1.0f, 64},   {0.8f, 40, 0.95f, 0.05f, 1.1f, 32},
      {1.5f, 0, 0.5f, 0.0f, 1.3f, 8},     {0.9f, 0, 1.0f, 0.1f, 1.0f, 64},
      {2.0f, 0, 0.99f, 0.0f, 1.0f, 0},    {0.6f, 5000, 0.9f, 0.02f, 1.2f, 64},
      {0.0f, 0, 1.0f, 0.0f, 1.5f, 16},    {3.0f, 1, 1.0f, 0.0f, 1.0f, 64},
      {1.2f, 0, 0.999f, 0.001f, 0.8f, 64}};
  int64_t drawn = 0;
  for (const Setting& s : settings) {
    for (uint64_t seed = 0; seed < 12; ++seed) {
      SamplerParams p;
      p.temperature = s.temp;
      p.top_k = s.top_k;
      p.top_p = s.top_p;
      p.min_p = s.min_p;
      p.repeat_penalty = s.penalty;
      p.repeat_last_n = s.last_n;
      p.seed = seed;
      auto fast = make_sampler(p);
      ReferenceSampler ref(p);
      std::mt19937 rng(static_cast<uint32_t>(seed * 977 + 1));
      std::vector<TokenId> a, b;
      for (int step = 0; step < 40; ++step) {
        const auto logits = fake_logits(n, rng, step % 2 ? 1.0f : 3.0f);
        const TokenId x = fast->sample(logits.data(), n);
        const TokenId y = ref.sample(logits.data(), n);
        a.push_back(x);
        b.push_back(y);
        fast->accept(x);
        ref.accept(y);
        ++drawn;
      }
      EXPECT_EQ(a, b) << "temp " << s.temp << " top-k " << s.top_k << " top-p " << s.top_p
                      << " min-p " << s.min_p << " penalty " << s.penalty << " seed " << seed;
    }
  }
  EXPECT_EQ(drawn, 11 * 12 * 40);
}

TEST(Sampler, ThePenaltyLooksBackOverTheLastNTokens) {
  SamplerParams p;
  p.repeat_penalty = 4.0f;
  p.repeat_last_n = 2;
  auto s = make_sampler(p);  // greedy with a penalty
  const std::vector<float> logits = {1.0f, 3.0f, 2.5f, -1.0f};
  EXPECT_EQ(s->sample(logits.data(), 4), 1);
  s->accept(1);  // 3 / 4 = 0.75
  EXPECT_EQ(s->sample(logits.data(), 4), 2);
  s->accept(2);  // 2.5 / 4: now 0 (1.0) leads
  EXPECT_EQ(s->sample(logits.data(), 4), 0);
  s->accept(0);  // 1 has left the look-back of 2
  EXPECT_EQ(s->sample(logits.data(), 4), 1);
  s->reset();
  EXPECT_EQ(s->sample(logits.data(), 4), 1);
}

TEST(Sampler, BadParametersSayWhich) {
  const auto bad = [](auto edit) {
    SamplerParams p;
    p.temperature = 0.5f;
    edit(p);
    EXPECT_THROW(make_sampler(p), InvalidArgument);
  };
  bad([](SamplerParams& p) { p.min_p = -0.1f; });
  bad([](SamplerParams& p) { p.min_p = 1.5f; });
  bad([](SamplerParams& p) { p.repeat_penalty = 0.0f; });
  bad([](SamplerParams& p) { p.repeat_last_n = -1; });
  bad([](SamplerParams& p) { p.top_p = 0.0f; });
  bad([](SamplerParams& p) { p.top_k = -2; });
}

}  // namespace
}  // namespace spillway
