// Token generation: samplers (a small plug-in interface), the one generation loop
// (Generator, pull style) and generate() on top of it, and chat formatting from the
// model's template.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/session/session.h"
#include "spillway/tokenizer/tokenizer.h"

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

// Why a generation ended.
enum class StopReason {
  kNone,             // still generating
  kLength,           // max_new_tokens were generated
  kEndOfGeneration,  // the model chose an end-of-generation token (EOS, <|im_end|>, ...)
  kStopString,       // one of the stop strings appeared in the text
  kCancelled,        // the caller stopped it (Generator::cancel, a TokenFn returning false)
};

// "none", "length", "eog", "stop", "cancelled".
std::string_view stop_reason_name(StopReason r);

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  bool stop_at_eog = true;  // stop at end-of-generation tokens (EOS, <|im_end|>, ...)
  // Generation ends where one of these appears in the text; the text before it is the
  // answer. Empty strings are not allowed (InvalidArgument).
  std::vector<std::string> stop;
};

// Watches generated text for stop strings. push() returns the text that is safe to send
// now: everything up to a stop string when one appears (then stopped() is true), else all
// but the tail that could still be the start of a stop string (never ending inside a UTF-8
// sequence). finish() returns what was held back, once generation ends otherwise.
class StopMatcher {
 public:
  // Throws InvalidArgument for an empty stop string.
  explicit StopMatcher(std::vector<std::string> stops = {});
  std::string push(std::string_view piece);
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string text_;  // everything generated so far
  size_t sent_ = 0;   // bytes of text_ handed out
  bool stopped_ = false;
};

// One step of a generation: the token sampled and the text it lets out.
struct GeneratedPiece {
  // The sampled token; kNoToken for the last piece, which only carries text held back
  // until the end (an incomplete UTF-8 sequence, a possible start of a stop string).
  TokenId token = kNoToken;
  // Text that is final now: valid UTF-8, never part of a stop string; may be empty (the
  // token's bytes are held back).
  std::string text;

  static constexpr TokenId kNoToken = -1;
};

// The generation loop, pull style: each next() samples one token from the session's last
// logits, stops at the end-of-generation token, a stop string or the length limit, and
// returns the text that token makes final (held-back UTF-8 bytes and possible stop-string
// starts are the generator's). Every front end generates through it: generate(), Chat,
// the Python iterator and the serve scheduler (which feeds many generators' tokens in one
// batched pass; see pending()).
//
// A sampled token is fed to the session lazily, by the next next() that needs its logits,
// so the last token of a generation is never fed: a caller that continues the stream feeds
// it with feed() (Chat closes a turn so), or drops it. Every token that enters the stream
// through the generator, fed or sampled, is told to the sampler (Sampler::accept), so
// samplers that look back see the prompt too.
//
// The session and a borrowed sampler must outlive the generator; calls on one generator
// must not overlap (it drives its session, a Session's thread rule holds).
class Generator {
 public:
  // With the caller's sampler (borrowed) or one made from params (owned; InvalidArgument
  // for bad params, as make_sampler). InvalidArgument for max_new_tokens < 0 or an empty
  // stop string.
  Generator(Session& session, Sampler& sampler, GenerateOptions opts = {});
  Generator(Session& session, const SamplerParams& params, GenerateOptions opts = {});
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Feeds tokens into the stream (the prompt, before generating; a turn's closing tokens,
  // after it): the pending sampled token first, if any, then `tokens`, in one forward pass
  // as Session::feed batches them; each is told to the sampler. Fed tokens are not part of
  // the generated text.
  void feed(std::span<const TokenId> tokens);
  // Tokens already in the session's stream (a conversation picked up again), told to the
  // sampler only, so that it looks back over them as if they had been fed here.
  void accept_history(std::span<const TokenId> tokens);

  // The next piece, or nullopt once generation has ended (stop_reason() says why; the
  // piece before nullopt may be the held-back tail, token == kNoToken). Samples from the
  // session's last logits: InvalidArgument when nothing was fed yet.
  std::optional<GeneratedPiece> next();

  // Ends the generation now (StopReason::kCancelled); held-back text is added to text()
  // but not returned by next().
  void cancel();

  // The sampled token that the session has not been fed yet (0 or 1 token); valid until
  // the next call. For batched decoding: a caller that feeds it itself (BatchDecoder)
  // calls mark_pending_fed() afterwards, and next() then samples at once.
  std::span<const TokenId> pending() const;
  void mark_pending_fed();

  bool done() const { return stop_ != StopReason::kNone; }
  StopReason stop_reason() const { return stop_; }
  // Tokens sampled so far (an end-of-generation token that stopped it not included).
  const std::vector<TokenId>& tokens() const { return tokens_; }
  // All text returned so far, plus the held-back tail once a cancel() has ended it.
  const std::string& text() const { return text_; }
  Session& session() const { return session_; }

 private:
  void stop(StopReason why);
  std::string drain();  // the held-back tail, once

  Session& session_;
  std::unique_ptr<Sampler> owned_sampler_;
  Sampler& sampler_;
  GenerateOptions opts_;
  StreamDecoder decoder_;
  StopMatcher matcher_;
  std::vector<TokenId> tokens_;
  std::string text_;
  TokenId pending_[1] = {GeneratedPiece::kNoToken};
  bool has_pending_ = false;
  bool tail_given_ = false;
  StopReason stop_ = StopReason::kNone;
};

struct GenerateResult {
  std::vector<TokenId> tokens;  // generated ids (without the prompt)
  std::string text;             // their decoded text (up to a stop string)
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  StopReason stop_reason = StopReason::kNone;
};

// Called with each new token and the text it makes final (possibly empty), then once with
// token GeneratedPiece::kNoToken and the held-back tail, if any. Return false to stop
// (StopReason::kCancelled).
using TokenFn = std::function<bool(TokenId id, std::string_view text)>;

// Throws InvalidArgument for an empty prompt, or one that the session's cache cannot hold
// together with what it holds already without evicting some of it before generation
// starts (a streaming policy would; a replaying one recomputes its window and may).
void check_prompt_fits(const Session& session, int64_t n_prompt);

// Feeds the prompt to the session (which must be fresh or continue the same stream),
// then generates through a Generator until it stops. Throws as check_prompt_fits.
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
