// Streaming perplexity: a token stream goes through a model under a KV-cache policy and
// every token's negative log-likelihood is taken from the logits the cache gives it,
// exactly as the policy leaves the cache at that token.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "spillway/model/model.h"

namespace spillway {

struct PerplexityOptions {
  kv::PolicySpec policy;  // "full" by default
  // A policy of the caller's instead of the spec's kind (see SessionOptions).
  kv::Cache::PolicyFactory policy_factory;
  // Tokens per forward pass. 1 is the per-token decode path (the reference); larger
  // chunks run prefill-style matrix work with the span each token would have had, and
  // give the same NLLs (tests/unit/model_test.cpp checks it).
  int64_t chunk = 128;
  int threads = 0;
  // Score only targets from this stream index on (earlier tokens still pass through the
  // cache, except for replaying policies, which only need the last W of them).
  int64_t score_from = 1;
  // Called after each chunk with (tokens processed, total).
  std::function<void(int64_t, int64_t)> progress;
  // A reference policy run in lockstep over the same stream (e.g. "full", or the
  // recompute:W oracle): every scored token also gets KL(reference || policy) of the two
  // next-token distributions and whether their most likely tokens agree.
  std::optional<kv::PolicySpec> reference;
};

struct PerplexityResult {
  std::string spec;          // the policy in words (kv::Cache::describe)
  int64_t tokens = 0;        // tokens scored
  int64_t first_target = 1;  // stream index of the first scored token
  double mean_nll = 0;       // nats
  double ppl = 0;            // exp(mean_nll)
  double seconds = 0;
  double tokens_per_s = 0;  // stream tokens per second
  uint64_t kv_bytes_peak = 0;
  int64_t kv_slots = 0;             // slots of a global layer (capacity + chunk slack)
  std::optional<int64_t> capacity;  // tokens a query attends to at most
  // [tokens]: nll[k] = -log p(token first_target+k | the cache at the token before it)
  std::vector<float> nll;

  // With a reference (PerplexityOptions::reference), else empty / NaN:
  std::string reference_spec;                // the reference policy in words
  std::vector<float> kl;                     // [tokens] KL(reference || policy) in nats
  std::vector<uint8_t> top1_agree;           // [tokens] 1 where both put the most mass on one token
  double kl_mean = std::nan("");             // mean of kl
  double top1_agree_rate = std::nan("");     // mean of top1_agree
  double reference_mean_nll = std::nan("");  // the reference's own mean NLL
};

// Throws InvalidArgument for a bad spec or a stream of fewer than 2 tokens.
PerplexityResult evaluate_perplexity(const model::Model& model, std::span<const TokenId> tokens,
                                     const PerplexityOptions& opts, ThreadPool* pool = nullptr);

// -log softmax(logits)[target] over n entries, accumulated in double.
double token_nll(const float* logits, int64_t n, TokenId target);

// KL(P || Q) in nats between the distributions softmax(p_logits) and softmax(q_logits) over
// n entries (sums in double; an entry where P has mass and Q none gives +inf), and whether
// their largest entries are the same one (lowest index among equals): the divergence of a
// policy's next-token distribution from a reference's.
struct Divergence {
  double kl = 0;
  bool top1_agree = false;
};
Divergence divergence(const float* p_logits, const float* q_logits, int64_t n);

}  // namespace spillway
