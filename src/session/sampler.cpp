#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "spillway/core/error.h"
#include "spillway/session/generate.h"

namespace spillway {

namespace {

class GreedySampler final : public Sampler {
 public:
  TokenId sample(const float* logits, int64_t n) override {
    return static_cast<TokenId>(std::max_element(logits, logits + n) - logits);
  }
};

class TopSampler final : public Sampler {
 public:
  explicit TopSampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}

  TokenId sample(const float* logits, int64_t n) override {
    idx_.resize(static_cast<size_t>(n));
    std::iota(idx_.begin(), idx_.end(), 0);
    auto by_logit = [&](TokenId a, TokenId b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    int64_t keep = n;
    if (p_.top_k > 0 && p_.top_k < n) {
      keep = p_.top_k;
      std::partial_sort(idx_.begin(), idx_.begin() + keep, idx_.end(), by_logit);
    } else {
      std::sort(idx_.begin(), idx_.end(), by_logit);
    }
    probs_.resize(static_cast<size_t>(keep));
    const double mx = logits[idx_[0]];
    double sum = 0.0;
    for (int64_t i = 0; i < keep; ++i)
      sum += probs_[static_cast<size_t>(i)] = std::exp((logits[idx_[i]] - mx) / p_.temperature);
    if (p_.top_p < 1.0f) {
      double cum = 0.0;
      int64_t cut = keep;
      for (int64_t i = 0; i < keep; ++i) {
        cum += probs_[static_cast<size_t>(i)] / sum;
        if (cum >= p_.top_p) {
          cut = i + 1;
          break;
        }
      }
      keep = cut;
      sum = std::accumulate(probs_.begin(), probs_.begin() + keep, 0.0);
    }
    std::uniform_real_distribution<double> u(0.0, sum);
    double r = u(rng_);
    for (int64_t i = 0; i < keep; ++i) {
      r -= probs_[static_cast<size_t>(i)];
      if (r <= 0) return idx_[static_cast<size_t>(i)];
    }
    return idx_[static_cast<size_t>(keep - 1)];
  }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<TokenId> idx_;
  std::vector<double> probs_;
};

}  // namespace

std::unique_ptr<Sampler> make_sampler(const SamplerParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    throw InvalidArgument(fmt::format("temperature must be >= 0, found {}", p.temperature));
  if (p.top_k < 0) throw InvalidArgument(fmt::format("top-k must be >= 0, found {}", p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
    throw InvalidArgument(fmt::format("top-p must be in (0, 1], found {}", p.top_p));
  if (p.temperature == 0.0f) return std::make_unique<GreedySampler>();
  return std::make_unique<TopSampler>(p);
}

}  // namespace spillway
