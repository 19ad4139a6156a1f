// Token generation: samplers (a small plug-in interface), the generation loop with a
// streaming callback that can stop it, and chat formatting from the model's template.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/session/session.h"

namespace spillway {

class Sampler {
 public:
  virtual ~Sampler() = default;
  // Picks the next token from logits[n_vocab]. Reads logits, never writes them.
  virtual TokenId sample(const float* logits, int64_t n_vocab) = 0;
  // Told every token of the stream in order, the prompt's and the sampled ones (generate()
  // and Chat do this), for samplers that look back (repetition penalty).
  virtual void accept(TokenId id) {}
  // Forgets the accepted tokens (a new stream); the random sequence goes on.
  virtual void reset() {}
};

// The sampler chain, in this order:
//  1. repetition penalty: each distinct token among the last repeat_last_n accepted ones
//     gets logit / penalty if its logit is > 0, else logit * penalty;
//  2. temperature 0: the largest logit (lowest id among equals); else x = logit / temperature;
//  3. top-k: the k largest x (lowest ids among equals);
//  4. probabilities: ops::softmax over the tokens left, ordered by x (descending, ids
//     ascending) after top-k, by id without it;
//  5. top-p: in order of probability (descending, ids ascending) the shortest prefix whose
//     cumulative probability (summed in double) reaches top_p;
//  6. min-p: tokens with probability < min_p * (the largest) leave;
//  7. the draw: r uniform in [0, sum of what is left) (double, mt19937_64 seeded with seed),
//     walking the tokens left by id until r is used up.
// sample() costs no heap allocation after the first call: selection is partial (a heap for
// top-k, a threshold pass for top-p / min-p), never a sort of the vocabulary.
struct SamplerParams {
  float temperature = 0.0f;     // 0: greedy (argmax)
  int top_k = 0;                // 0: off
  float top_p = 1.0f;           // 1: off
  float min_p = 0.0f;           // 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;       // accepted tokens the penalty looks back over (0: none)
  uint64_t seed = 0;            // same seed, same choices
};

// Throws InvalidArgument for temperature < 0, top_k < 0, top_p outside (0, 1], min_p
// outside [0, 1], repeat_penalty <= 0, repeat_last_n < 0.
std::unique_ptr<Sampler> make_sampler(const SamplerParams& params);

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  bool stop_at_eog = true;  // stop at end-of-generation tokens (EOS, <|im_end|>, ...)
};

struct GenerateResult {
  std::vector<TokenId> tokens;  // generated ids (without the prompt)
  std::string text;             // their decoded text
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  std::string stop_reason;  // "length", "eog", "callback"
};

// Called with each new token and the text it completes (partial UTF-8 held back).
// Return false to stop.
using TokenFn = std::function<bool(TokenId id, std::string_view text)>;

// Feeds the prompt to the session (which must be fresh or continue the same stream),
// then samples up to max_new_tokens. Throws InvalidArgument for an empty prompt or one
// longer than the policy's cache can hold.
GenerateResult generate(Session& session, std::span<const TokenId> prompt, Sampler& sampler,
                        const GenerateOptions& opts, const TokenFn& on_token = {});

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// Formats messages with the chat template in tokenizer.chat_template. Recognized template
// families: ChatML (<|im_start|>), Llama 3 (<|start_header_id|>), Llama 2 ([INST]), Zephyr
// (<|user|>); a template's default system message (ChatML) is honored. Throws
// UnsupportedError for a template of another family, FormatError when there is none.
std::string apply_chat_template(const std::string& chat_template,
                                const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt = true);

}  // namespace spillway
