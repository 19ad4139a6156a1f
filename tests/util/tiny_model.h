// A tiny random-weight model, written by the tests themselves: GGUF metadata like a real
// file (architecture, hyperparameters, a byte-level BPE vocabulary with a few merges and
// control tokens), quantized weights. Llama by default, Gemma 3 with architecture
// "gemma3" (QK-norm and post-norm tensors, sliding-window metadata). Runs in milliseconds.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "spillway/core/types.h"
#include "spillway/gguf/gguf.h"
#include "spillway/tokenizer/tokenizer.h"

namespace spillway::test {

struct TinyModelSpec {
  int64_t n_layer = 2;
  int64_t n_embd = 64;
  int64_t n_head = 4;
  int64_t n_head_kv = 2;
  int64_t n_ff = 96;
  int64_t n_ctx = 512;
  float rope_base = 10000.0f;
  DType matrix_type = DType::Q4_1;  // projections
  DType embd_type = DType::Q8_0;    // token embedding (= tied output)
  bool tied_output = true;
  float weight_scale = 0.25f;  // projections ~ U(-s, s) / sqrt(fan_in) * 4
  uint64_t seed = 1;
  // Head dimension written as attention.key_length/value_length (0: n_embd / n_head, no key).
  int64_t head_dim = 0;
  // gemma3: attention.sliding_window (0: not written) and the pattern period written as
  // attention.sliding_window_pattern (0: not written; the architecture's default applies).
  int64_t sliding_window = 0;
  int64_t swa_pattern = 0;
  float rope_base_local = 0.0f;  // gemma3: rope.freq_base_swa when > 0
  // "llama" or "gemma3" (or, for error tests, anything else: llama tensors under that name).
  std::string architecture = "llama";
  // For error tests: metadata and tensors as a broken or unsupported file would have them.
  std::string rope_scaling_type;  // written as llama.rope.scaling.type when not empty
  std::string omit_tensor;        // a tensor name left out
  std::string misshape_tensor;    // a 2-D tensor written with its dimensions swapped
  // Matrices whose names end with this are written as zeros ("attn_k.weight": every key is
  // 0, so every score is 0 and attention is a plain mean of the values: an answer known in
  // closed form). The other tensors keep the values of the same seed.
  std::string zero_tensors;
  // Keys written with these values (and types) instead of the spec's, or added: for files
  // whose metadata lies ("llama.context_length" as a uint64 of 2^40).
  std::vector<std::pair<std::string, gguf::Value>> replace_kv;
};

// The smallest spec worth a file: 1 layer, 32 wide, 2 query heads sharing 1 KV head, an
// FFN of 32. For inputs built around a model rather than tests of its numbers (hostile
// sizes, fuzzing seeds).
TinyModelSpec small_spec();

// Vocabulary: the 256 byte tokens (GPT-2 byte-to-unicode pieces), the merges "Ġ t",
// "h e", "e r" and their results, then the control tokens <|endoftext|> (BOS/EOS),
// <|im_start|>, <|im_end|>. tokenizer.ggml.pre = "gpt2".
inline constexpr int64_t kTinyVocab = 256 + 3 + 3;

// Writes the model to dir/name and returns the path.
std::string write_tiny_model(const std::filesystem::path& dir, const TinyModelSpec& spec = {},
                             const std::string& name = "tiny.gguf");

// n tokens drawn uniformly from ids 0..258 (the byte tokens and the merges' results of
// the tiny vocabulary), seeded: the same stream for the same seed.
std::vector<TokenId> random_tokens(int64_t n, uint64_t seed);

}  // namespace spillway::test
