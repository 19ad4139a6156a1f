// The sampler chain of generate.h. The costly steps of a naive chain are sorting the
// vocabulary (top-k, top-p) and exp over it; here top-k keeps a heap of k candidates in
// one pass, the probabilities come from the vectorized ops::softmax, and top-p / min-p
// look only at the tokens above a threshold (lowered until the kept mass is reached). The
// result is the chain's definition exactly: tokens below the threshold would sort after
// every token above it, so the prefix found is the prefix of the full sort.
#include <fmt/core.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <utility>

#include "spillway/core/error.h"
#include "spillway/ops/ops.h"
#include "spillway/session/generate.h"

namespace spillway {

namespace {

TokenId argmax(const float* x, int64_t n) {
  return static_cast<TokenId>(std::max_element(x, x + n) - x);
}

class GreedySampler final : public Sampler {
 public:
  TokenId sample(const float* logits, int64_t n) override { return argmax(logits, n); }
};

class ChainSampler final : public Sampler {
 public:
  explicit ChainSampler(const SamplerParams& p)
      : p_(p), rng_(p.seed), recent_(static_cast<size_t>(p.repeat_last_n), 0) {}

  void accept(TokenId id) override {
    if (recent_.empty()) return;
    recent_[head_] = id;
    head_ = (head_ + 1) % recent_.size();
    n_recent_ = std::min(n_recent_ + 1, recent_.size());
  }
  void reset() override {
    head_ = 0;
    n_recent_ = 0;
  }

  TokenId sample(const float* logits, int64_t n) override {
    const bool penalize = p_.repeat_penalty != 1.0f && n_recent_ > 0;
    x_.resize(static_cast<size_t>(n));
    if (p_.temperature == 0.0f) {
      std::copy(logits, logits + n, x_.begin());
      if (penalize) penalize_into(logits, n, 1.0f);
      return argmax(x_.data(), n);
    }
    const float t = p_.temperature;
    for (int64_t i = 0; i < n; ++i) x_[static_cast<size_t>(i)] = logits[i] / t;
    if (penalize) penalize_into(logits, n, t);

    items_.clear();
    if (p_.top_k > 0 && p_.top_k < n) {
      top_k(n);
      const size_t k = cand_.size();
      probs_.resize(k);
      for (size_t j = 0; j < k; ++j) probs_[j] = x_[static_cast<size_t>(cand_[j])];
      ops::softmax(probs_.data(), static_cast<int64_t>(k));
      for (size_t j = 0; j < k; ++j) items_.emplace_back(probs_[j], cand_[j]);
      sort_by_probability();
      cut_top_p();
    } else {
      float* p = x_.data();
      ops::softmax(p, n);
      if (p_.top_p >= 1.0f && p_.min_p <= 0.0f) return draw_from_all(p, n);
      above_threshold(p, n);
    }
    // min-p (the first item has the largest probability).
    if (p_.min_p > 0.0f) {
      const float floor = p_.min_p * items_.front().first;
      size_t keep = 0;
      while (keep < items_.size() && !(items_[keep].first < floor)) ++keep;
      items_.resize(std::max<size_t>(keep, 1));
    }
    // The draw, in id order.
    std::sort(items_.begin(), items_.end(),
              [](const auto& a, const auto& b) { return a.second < b.second; });
    double sum = 0.0;
    for (const auto& it : items_) sum += it.first;
    std::uniform_real_distribution<double> u(0.0, sum);
    double r = u(rng_);
    for (const auto& it : items_) {
      r -= it.first;
      if (r <= 0) return it.second;
    }
    return items_.back().second;
  }

 private:
  // x[t] = penalized(logit[t]) / t for every token in the look-back (repeats rewrite the
  // same value).
  void penalize_into(const float* logits, int64_t n, float t) {
    const float rp = p_.repeat_penalty;
    for (size_t i = 0; i < n_recent_; ++i) {
      const TokenId id = recent_[i];
      if (id < 0 || id >= n) continue;
      const float l = logits[id];
      x_[static_cast<size_t>(id)] = (l > 0 ? l / rp : l * rp) / t;
    }
  }

  bool better(TokenId a, TokenId b) const {
    const float xa = x_[static_cast<size_t>(a)], xb = x_[static_cast<size_t>(b)];
    return xa > xb || (xa == xb && a < b);
  }

  // cand_ = the top_k ids by x, best first. A heap with the worst candidate on top; one
  // pass, a comparison against the worst per token.
  void top_k(int64_t n) {
    const auto worse_on_top = [this](TokenId a, TokenId b) { return better(a, b); };
    cand_.clear();
    for (TokenId i = 0; i < p_.top_k; ++i) cand_.push_back(i);
    std::make_heap(cand_.begin(), cand_.end(), worse_on_top);
    float thr = x_[static_cast<size_t>(cand_.front())];
    for (auto i = static_cast<TokenId>(p_.top_k); i < n; ++i) {
      if (x_[static_cast<size_t>(i)] < thr || !better(i, cand_.front())) continue;
      std::pop_heap(cand_.begin(), cand_.end(), worse_on_top);
      cand_.back() = i;
      std::push_heap(cand_.begin(), cand_.end(), worse_on_top);
      thr = x_[static_cast<size_t>(cand_.front())];
    }
    std::sort(cand_.begin(), cand_.end(), [this](TokenId a, TokenId b) { return better(a, b); });
  }

  void sort_by_probability() {
    std::sort(items_.begin(), items_.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
  }

  // Keeps the shortest prefix of items_ whose cumulative probability reaches top_p;
  // returns whether it was reached.
  bool cut_top_p() {
    if (p_.top_p >= 1.0f) return false;
    double cum = 0.0;
    for (size_t j = 0; j < items_.size(); ++j) {
      cum += items_[j].first;
      if (cum >= p_.top_p) {
        items_.resize(j + 1);
        return true;
      }
    }
    return false;
  }

  // items_ = the tokens top-p and min-p keep of probabilities p (by id), sorted by
  // probability. Collects the tokens at or above a threshold; when top-p is not reached
  // within them, lowers the threshold (never under min-p's floor) and collects again.
  void above_threshold(const float* p, int64_t n) {
    const float p_max = max_probability(p, n);
    const float floor = p_.min_p > 0.0f ? p_.min_p * p_max : 0.0f;
    static constexpr float kSteps[] = {0x1p-8f, 0x1p-16f, 0x1p-32f};
    for (size_t step = 0;; ++step) {
      const bool last = step >= std::size(kSteps) || p_.top_p >= 1.0f;
      const float tau = last ? floor : std::max(floor, p_max * kSteps[step]);
      collect(p, n, tau);
      if (!last && p_.top_p < 1.0f) {
        // Not enough mass above tau for top-p (with room for rounding): no need to sort.
        double mass = 0.0;
        for (const auto& it : items_) mass += it.first;
        if (mass < static_cast<double>(p_.top_p) - 1e-3) continue;
      }
      if (sorted_prefix_top_p() || last || tau <= floor) return;
    }
  }

  // cut_top_p() without sorting all of items_: sorts growing prefixes (each selected with
  // nth_element) until the cumulative probability reaches top_p. Leaves items_ sorted by
  // probability either way.
  bool sorted_prefix_top_p() {
    if (p_.top_p >= 1.0f) {
      sort_by_probability();
      return false;
    }
    const auto by_p = [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    double cum = 0.0;
    size_t done = 0;
    for (size_t m = std::min<size_t>(64, items_.size()); done < items_.size();
         m = std::min(items_.size(), m * 4)) {
      std::nth_element(items_.begin() + static_cast<std::ptrdiff_t>(done),
                       items_.begin() + static_cast<std::ptrdiff_t>(m), items_.end(), by_p);
      std::sort(items_.begin() + static_cast<std::ptrdiff_t>(done),
                items_.begin() + static_cast<std::ptrdiff_t>(m), by_p);
      for (; done < m; ++done) {
        cum += items_[done].first;
        if (cum >= p_.top_p) {
          items_.resize(done + 1);
          return true;
        }
      }
    }
    return false;
  }

  // Probabilities are >= 0, so they order as their bit patterns do as int32: these loops
  // compare integers, which vectorize without fast-math.
  static int32_t bits(float x) { return std::bit_cast<int32_t>(x); }

  static float max_probability(const float* p, int64_t n) {
    int32_t m = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, bits(p[i]));
    return std::bit_cast<float>(m);
  }

  // items_ = (p, id) of the tokens with p >= tau (>= 0), in id order; blocks without one
  // are passed over after a vector comparison.
  void collect(const float* p, int64_t n, float tau) {
    items_.clear();
    const int32_t t = bits(tau);
    constexpr int64_t kBlock = 64;
    for (int64_t b = 0; b < n; b += kBlock) {
      const int64_t e = std::min(n, b + kBlock);
      int32_t any = 0;
      for (int64_t i = b; i < e; ++i) any |= static_cast<int32_t>(bits(p[i]) >= t);
      if (!any) continue;
      for (int64_t i = b; i < e; ++i)
        if (p[i] >= tau) items_.emplace_back(p[i], static_cast<TokenId>(i));
    }
  }

  TokenId draw_from_all(const float* p, int64_t n) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += p[i];
    std::uniform_real_distribution<double> u(0.0, sum);
    double r = u(rng_);
    for (int64_t i = 0; i < n; ++i) {
      r -= p[i];
      if (r <= 0) return static_cast<TokenId>(i);
    }
    return static_cast<TokenId>(n - 1);
  }

  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<TokenId> recent_;  // [repeat_last_n] ring of accepted tokens
  size_t head_ = 0;              // next write position in recent_
  size_t n_recent_ = 0;          // valid entries of recent_
  std::vector<float> x_;         // [n_vocab] logits / temperature, then probabilities
  std::vector<TokenId> cand_;    // [top_k] top-k candidates
  std::vector<float> probs_;     // [top_k] their probabilities
  std::vector<std::pair<float, TokenId>> items_;  // (probability, id) of the tokens kept
};

}  // namespace

std::unique_ptr<Sampler> make_sampler(const SamplerParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    throw InvalidArgument(fmt::format("temperature must be >= 0, found {}", p.temperature));
  if (p.top_k < 0) throw InvalidArgument(fmt::format("top-k must be >= 0, found {}", p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
    throw InvalidArgument(fmt::format("top-p must be in (0, 1], found {}", p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
    throw InvalidArgument(fmt::format("min-p must be in [0, 1], found {}", p.min_p));
  if (!(p.repeat_penalty > 0.0f) || !std::isfinite(p.repeat_penalty))
    throw InvalidArgument(fmt::format("repeat penalty must be > 0, found {}", p.repeat_penalty));
  if (p.repeat_last_n < 0)
    throw InvalidArgument(fmt::format("repeat-last-n must be >= 0, found {}", p.repeat_last_n));
  if (p.temperature == 0.0f && p.repeat_penalty == 1.0f) return std::make_unique<GreedySampler>();
  return std::make_unique<ChainSampler>(p);
}

}  // namespace spillway
