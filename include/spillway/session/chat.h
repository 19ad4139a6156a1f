// A multi-turn conversation in one Session, formatted with the model's chat template and
// encoded turn by turn: each turn feeds only its own tokens (the user message and the
// assistant header; then the answer as sampled, closed by the template's end of turn),
// never the history again. Chat marks where every message begins in the stream
// (Session::mark_turn_start), so policies that evict whole turns (sink:S+W,evict=turn) can;
// under a bounded policy the conversation goes on without a context limit.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "spillway/session/generate.h"
#include "spillway/session/session.h"

namespace spillway {

// One chat template's text per message, for encoding a conversation incrementally. The
// pieces concatenate to what apply_chat_template gives for the same conversation (for
// Llama 2 the answer begins with the space the model writes after [/INST]).
class ChatFormat {
 public:
  // Recognizes the template's family as apply_chat_template does. `system` empty: the
  // template's default system message, if it has one (ChatML). Throws FormatError for an
  // empty template, UnsupportedError for one of another family.
  ChatFormat(const std::string& chat_template, std::string system = {});

  // The family: "chatml", "llama3", "zephyr", "llama2".
  const std::string& family() const { return family_; }
  // Text of the conversation's start, before the first user message: the system message
  // (empty when there is none or it goes inside the first user message, Llama 2). BOS is
  // the tokenizer's to add.
  std::string start() const;
  // A user message is user_prefix + content + user_suffix (`first`: the conversation's
  // first message, where Llama 2 puts the system message).
  std::string user_prefix(bool first) const;
  const std::string& user_suffix() const { return user_suffix_; }
  std::string user(std::string_view content, bool first) const;
  // What follows a user message and precedes the answer (e.g. "<|im_start|>assistant\n").
  const std::string& assistant_header() const { return assistant_header_; }
  // What closes an answer (e.g. "<|im_end|>\n"; the model's own end-of-turn token is the
  // first token of it where the template has one).
  const std::string& assistant_end() const { return assistant_end_; }

 private:
  std::string family_, system_;
  bool has_system_ = false;  // a system block starts the conversation (ChatML: even empty)
  std::string user_suffix_, assistant_header_, assistant_end_;
};

struct ChatOptions {
  std::string system;        // system message; empty: the template's default, if any
  GenerateOptions generate;  // per answer: tokens at most, stop at end-of-generation
};

// One exchange: the user's message in, the answer out.
struct ChatReply {
  int64_t prompt_tokens = 0;   // tokens fed before the answer: the user message and the
                               // assistant header (and, on the first turn, the start)
  int64_t closing_tokens = 0;  // tokens fed after the answer to close it
  GenerateResult answer;       // tokens (the end-of-turn token not included), text, stop
                               // reason, timings
  int64_t stream_tokens = 0;   // tokens in the stream after the exchange
};

// What the cache holds of the conversation (the spec's policy: global layers).
struct ChatStats {
  int64_t tokens = 0;            // tokens in the stream so far
  int64_t messages = 0;          // messages so far (the conversation's start counts as one)
  int64_t held = 0;              // tokens the latest token attended to (the cache content)
  int64_t capacity = 0;          // tokens it may hold at most (0: unbounded)
  int64_t slots = 0;             // slots its storage has
  uint64_t kv_bytes = 0;         // bytes of the KV storage, every layer
  int64_t evicted = 0;           // tokens - held
  int64_t messages_whole = 0;    // messages whose every token is held
  int64_t messages_partial = 0;  // messages of which some tokens are held
};

class Chat {
 public:
  // The session must be fresh (n_past() == 0; InvalidArgument otherwise) and outlive the
  // chat. Throws FormatError when the model has no chat template (a pretrained base model),
  // UnsupportedError for a template of an unknown family.
  Chat(Session& session, ChatOptions opts);

  // Feeds the user message and the assistant header, samples the answer (streaming each
  // piece of text to on_token, which may stop it by returning false), then feeds the answer's
  // last token and the template's end of turn, so that the stream holds the whole exchange.
  // Every fed token is passed to sampler.accept().
  ChatReply send(std::string_view user, Sampler& sampler, const TokenFn& on_token = {});

  // Forgets the conversation (the session is reset; the next send starts anew).
  void reset();

  ChatStats stats() const;
  const ChatFormat& format() const { return format_; }
  Session& session() { return session_; }
  // Stream index where each message begins (0: the conversation's start), ascending; 8
  // bytes per message.
  const std::vector<int64_t>& message_starts() const { return starts_; }

  // The tokens of text as Chat feeds it: the template's text with its special tokens, a
  // user's content without (a user cannot type a control token). `bos`: prepend the
  // tokenizer's BOS when its metadata asks for one.
  std::vector<TokenId> encode_template(std::string_view text, bool bos = false) const;
  std::vector<TokenId> encode_content(std::string_view text) const;

 private:
  Session& session_;
  ChatOptions opts_;
  ChatFormat format_;
  std::vector<int64_t> starts_;
};

}  // namespace spillway
