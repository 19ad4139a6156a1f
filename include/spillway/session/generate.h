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
  // Picks the next token from logits[n_vocab]. May reorder nothing in logits.
  virtual TokenId sample(const float* logits, int64_t n_vocab) = 0;
};

struct SamplerParams {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;         // same seed, same choices
};

// Greedy when temperature == 0, else temperature + top-k + top-p sampling.
// Throws InvalidArgument for temperature < 0, top_k < 0, top_p outside (0, 1].
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
