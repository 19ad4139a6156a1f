#include "spillway/session/perplexity.h"

#include <fmt/core.h>

#include <chrono>
#include <cmath>

#include "spillway/core/error.h"
#include "spillway/session/session.h"

namespace spillway {

double token_nll(const float* logits, int64_t n, TokenId target) {
  float mx = logits[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  return std::log(sum) + mx - logits[target];
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
  double total = 0.0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t done = 0; done < first_logit;) {
    const int64_t count = std::min<int64_t>(opts.chunk, first_logit - done);
    session.advance(tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(count)));
    done += count;
    if (opts.progress) opts.progress(done, n - 1);
  }
  for (int64_t done = first_logit; done < n - 1;) {
    // The last token needs no logits of its own: feed up to n-2.
    const int64_t count = std::min<int64_t>(opts.chunk, n - 1 - done);
    session.feed(tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(count)),
                 [&](int64_t i, const float* logits) {
                   const double v = token_nll(logits, n_vocab, tokens[static_cast<size_t>(i + 1)]);
                   r.nll[static_cast<size_t>(i - first_logit)] = static_cast<float>(v);
                   total += v;
                   return true;
                 });
    done += count;
    if (opts.progress) opts.progress(done, n - 1);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.mean_nll = total / static_cast<double>(r.tokens);
  r.ppl = std::exp(r.mean_nll);
  r.tokens_per_s = r.seconds > 0 ? static_cast<double>(n - 1) / r.seconds : 0.0;
  r.kv_bytes_peak = session.kv_bytes_peak();
  r.kv_slots = session.policy().n_slots();
  return r;
}

}  // namespace spillway
