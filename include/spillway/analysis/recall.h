// What a cache policy remembers: controlled probes streamed through a policy at chosen
// distances. A probe is data (a seeded generator gives the token ids and what to score or
// ask), a measurement is a function of the NLLs or the answers the model gives under the
// policy; the generator, the runner and the scorer are apart.
//
//   copy     a span of L random tokens inside real text (the filler), then the same span
//            again after d more filler tokens. recall = 1 - NLL(repeat) / NLL(first): the
//            model copies a span it still sees (induction heads, present in even the
//            smallest models), and is as lost as at the first sight when it is gone.
//   passkey  "The pass key is NNNNN. Remember it." inside filler, the question d tokens
//            later, the greedy answer: exact match.
//   lines    numbered lines "line k: REGISTER_CONTENT is <NNNN>" (StreamEval, StreamingLLM
//            section 4.4), then a question about the line whose end lies d tokens before
//            it, the greedy answer: exact match.
//
// passkey and lines are asked in the model's chat template when it has one (an instruct
// model; the assistant's turn opens with "The pass key is" so that the greedy answer is
// the number), as plain text otherwise (a base model completes "The pass key is").
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/core/thread_pool.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"

namespace spillway::analysis {

enum class ProbeKind { kCopy, kPasskey, kLines };

// "copy", "passkey", "lines"; parse_probe_kind returns nullopt for another name.
const char* probe_kind_name(ProbeKind k);
std::optional<ProbeKind> parse_probe_kind(std::string_view name);

struct ProbeOptions {
  ProbeKind kind = ProbeKind::kCopy;
  int64_t distance = 256;  // filler tokens between what is remembered and its recall
  uint64_t seed = 0;       // the span, the key or the values, and where in the filler
  int64_t span = 32;       // copy: tokens of the random span
  int64_t lead = 64;       // filler tokens before what is remembered (after BOS)
  // The largest distance of the run this probe belongs to (0: `distance`). Where the
  // filler starts depends on it and on the seed only, so the probes of one seed at
  // distances up to `reach` are one stream up to where their recall begins.
  int64_t reach = 0;
};

// One probe as a stream of token ids.
struct Probe {
  std::vector<TokenId> tokens;
  // copy: stream indices [begin, end) of the span's first occurrence and of its repeat;
  // the scored targets are each span's tokens but its first (begin + 1 .. end - 1).
  int64_t first_begin = 0, first_end = 0;
  int64_t repeat_begin = 0, repeat_end = 0;
  // passkey, lines: the answer the greedy continuation of `tokens` should start with.
  std::string answer;
  int64_t max_answer_tokens = 0;
};

// The probe for `filler` (token ids of real text, at least lead + distance tokens; with
// the tokenizer's BOS when it asks for one, added here). Deterministic in the options;
// the same seed gives the same span, key or values at every distance. Throws
// InvalidArgument for a filler too short, distance < 0, span < 2 or lead < 0.
Probe make_probe(const model::Model& model, std::span<const TokenId> filler,
                 const ProbeOptions& opts);

// A generated answer up to the end of its first line that holds more than white space
// (the line break not included): a model may open its answer with a line break.
std::string answer_line(std::string_view text);

// The first run of decimal digits in `text` equals `answer`.
bool answer_matches(std::string_view text, std::string_view answer);

struct RecallOptions {
  std::vector<kv::PolicySpec> policies;
  ProbeKind kind = ProbeKind::kCopy;
  std::vector<int64_t> distances = {64, 128, 256, 512, 1024, 2048, 4096};
  int64_t seeds = 3;  // probes per distance (seeds 0 .. seeds - 1)
  int64_t span = 32;
  int64_t lead = 64;
  int64_t chunk = 128;  // tokens per forward pass where the policy allows
  int threads = 0;
  // Called after each probe with (probes done, probes in all).
  std::function<void(int64_t, int64_t)> progress;
};

// One (policy, distance) cell: means over the seeds.
struct RecallRow {
  std::string spec;  // the policy in words
  ProbeKind kind = ProbeKind::kCopy;
  int64_t distance = 0;
  int64_t n = 0;  // probes (seeds)
  // copy: mean NLL of the first and the repeated span, recall = 1 - nll_repeat /
  // nll_first, and each seed's own recall; NaN for the other probes.
  double nll_first = 0, nll_repeat = 0, recall = 0;
  std::vector<double> recall_seeds;
  // passkey, lines: the share of exact answers, each seed's answer and the number it
  // should have given; NaN for copy.
  double accuracy = 0;
  std::vector<std::string> answers, expected;
  int64_t kv_slots = 0;        // slots of a global layer
  uint64_t kv_bytes_peak = 0;  // the largest KV storage over the probes
  std::optional<int64_t> capacity;
  double seconds = 0;
};

// Streams every probe through every policy (chunked where the policy allows, the filler
// between the scored parts without logits). The probes of one seed share their stream up
// to where their distances part, so a policy streams it once per seed, to the largest
// distance, and at each smaller one runs that probe's recall from a checkpoint and goes
// back. Rows in the order policies x distances. Throws InvalidArgument for a bad option
// or a filler too short for the largest distance.
std::vector<RecallRow> measure_recall(const model::Model& model, std::span<const TokenId> filler,
                                      const RecallOptions& opts, ThreadPool* pool = nullptr);

// The effective context of a policy: the distance of `rows` (one policy, one probe,
// ascending distances) from which on recall (copy) or accuracy stays below `threshold`,
// or nullopt when the last one is not below it. A dip at a short distance that recovers
// further on (a model that answers badly at close range) is not where memory ends.
std::optional<int64_t> effective_context(std::span<const RecallRow> rows, double threshold = 0.5);

}  // namespace spillway::analysis
