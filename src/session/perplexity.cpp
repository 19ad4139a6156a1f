#include "spillway/session/perplexity.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "spillway/core/error.h"
#include "spillway/session/session.h"

namespace spillway {

namespace {

struct Softmax {
  float max = 0;
  int64_t argmax = 0;
  double log_sum = 0;  // log sum exp(l - max)
};

Softmax softmax_of(const float* l, int64_t n) {
  Softmax s;
  s.max = l[0];
  for (int64_t i = 1; i < n; ++i) {
    if (l[i] > s.max) {
      s.max = l[i];
      s.argmax = i;
    }
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(l[i] - s.max));
  s.log_sum = std::log(sum);
  return s;
}

// -log softmax(l)[target] from l's softmax sums.
double nll_of(const Softmax& s, const float* l, TokenId target) {
  return s.log_sum + s.max - l[target];
}

// KL(p || q) and top-1 agreement from both rows' softmax sums.
Divergence divergence_of(const float* p, const Softmax& sp, const float* q, const Softmax& sq,
                         int64_t n) {
  // log p_i = p_i - max_p - log_sum_p, and likewise for q.
  const double cp = static_cast<double>(sp.max) + sp.log_sum;
  const double cq = static_cast<double>(sq.max) + sq.log_sum;
  double kl = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double lp = static_cast<double>(p[i]) - cp;
    const double pi = std::exp(lp);
    if (pi > 0.0) kl += pi * (lp - (static_cast<double>(q[i]) - cq));
  }
  return {kl > 0.0 ? kl : 0.0, sp.argmax == sq.argmax};
}

}  // namespace

double token_nll(const float* logits, int64_t n, TokenId target) {
  return nll_of(softmax_of(logits, n), logits, target);
}

Divergence divergence(const float* p, const float* q, int64_t n) {
  return divergence_of(p, softmax_of(p, n), q, softmax_of(q, n), n);
}

PerplexityResult evaluate_perplexity(const model::Model& model, std::span<const TokenId> tokens,
                                     const PerplexityOptions& opts, ThreadPool* pool) {
  if (tokens.size() < 2)
    throw InvalidArgument(fmt::format("perplexity needs at least 2 tokens, got {}", tokens.size()));
  if (opts.chunk < 1) throw InvalidArgument("perplexity: chunk must be >= 1");
  SessionOptions so;
  so.policy = opts.policy;
  so.policy_factory = opts.policy_factory;
  so.max_batch = opts.chunk;
  so.max_stream = static_cast<int64_t>(tokens.size());
  so.threads = opts.threads;
  Session session(model, so, pool);
  std::unique_ptr<Session> ref;
  if (opts.reference) {
    SessionOptions ro = so;
    ro.policy = *opts.reference;
    ro.policy_factory = nullptr;
    ref = std::make_unique<Session>(model, ro, pool);
  }

  const int64_t n = static_cast<int64_t>(tokens.size());
  if (opts.score_from < 1 || opts.score_from >= n)
    throw InvalidArgument(
        fmt::format("perplexity: score_from {} outside [1, {})", opts.score_from, n));
  PerplexityResult r;
  r.spec = session.cache().describe();
  r.capacity = session.cache().capacity();
  r.first_target = opts.score_from;
  const int64_t first_logit = opts.score_from - 1;
  r.tokens = n - 1 - first_logit;
  r.nll.resize(static_cast<size_t>(r.tokens));
  const int64_t n_vocab = model.config().n_vocab;
  double total = 0.0, ref_total = 0.0, kl_total = 0.0;
  int64_t agree = 0;
  std::vector<float> ref_logits;  // [chunk][n_vocab] the reference's logits of a chunk
  if (ref) {
    r.reference_spec = ref->cache().describe();
    r.kl.resize(static_cast<size_t>(r.tokens));
    r.top1_agree.resize(static_cast<size_t>(r.tokens));
    ref_logits.resize(static_cast<size_t>(std::min<int64_t>(opts.chunk, n) * n_vocab));
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t done = 0; done < first_logit;) {
    const int64_t count = std::min<int64_t>(opts.chunk, first_logit - done);
    const auto part = tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(count));
    session.advance(part);
    if (ref) ref->advance(part);
    done += count;
    if (opts.progress) opts.progress(done, n - 1);
  }
  for (int64_t done = first_logit; done < n - 1;) {
    // The last token needs no logits of its own: feed up to n-2.
    const int64_t count = std::min<int64_t>(opts.chunk, n - 1 - done);
    const auto part = tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(count));
    if (ref) {
      ref->feed(part, [&](int64_t i, const float* logits) {
        std::copy(logits, logits + n_vocab,
                  ref_logits.begin() + static_cast<std::ptrdiff_t>((i - done) * n_vocab));
        return true;
      });
    }
    session.feed(part, [&](int64_t i, const float* logits) {
      // Each row's softmax sums once, for its NLL and for the divergence.
      const TokenId target = tokens[static_cast<size_t>(i + 1)];
      const Softmax sq = softmax_of(logits, n_vocab);
      const double v = nll_of(sq, logits, target);
      const auto k = static_cast<size_t>(i - first_logit);
      r.nll[k] = static_cast<float>(v);
      total += v;
      if (ref) {
        const float* rl = ref_logits.data() + (i - done) * n_vocab;
        const Softmax sr = softmax_of(rl, n_vocab);
        ref_total += nll_of(sr, rl, target);
        const Divergence d = divergence_of(rl, sr, logits, sq, n_vocab);
        r.kl[k] = static_cast<float>(d.kl);
        r.top1_agree[k] = d.top1_agree ? 1 : 0;
        kl_total += d.kl;
        agree += d.top1_agree ? 1 : 0;
      }
      return true;
    });
    done += count;
    if (opts.progress) opts.progress(done, n - 1);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.mean_nll = total / static_cast<double>(r.tokens);
  if (ref) {
    r.kl_mean = kl_total / static_cast<double>(r.tokens);
    r.top1_agree_rate = static_cast<double>(agree) / static_cast<double>(r.tokens);
    r.reference_mean_nll = ref_total / static_cast<double>(r.tokens);
  }
  r.ppl = std::exp(r.mean_nll);
  r.tokens_per_s = r.seconds > 0 ? static_cast<double>(n - 1) / r.seconds : 0.0;
  r.kv_bytes_peak = session.kv_bytes_peak();
  r.kv_slots = session.policy().n_slots();
  return r;
}

}  // namespace spillway
