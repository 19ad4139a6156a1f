// Streaming perplexity: a token stream goes through a model under a KV-cache policy and
// every token's negative log-likelihood is taken from the logits the cache gives it,
// exactly as the policy leaves the cache at that token.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "spillway/model/model.h"

namespace spillway {

struct PerplexityOptions {
  kv::PolicySpec policy;  // "full" by default; a string converts
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
};

// Throws InvalidArgument for a bad spec or a stream of fewer than 2 tokens.
PerplexityResult evaluate_perplexity(const model::Model& model, std::span<const TokenId> tokens,
                                     const PerplexityOptions& opts, ThreadPool* pool = nullptr);

// -log softmax(logits)[target] over n entries, accumulated in double.
double token_nll(const float* logits, int64_t n, TokenId target);

}  // namespace spillway
