// A tiny random-weight llama model, written by the tests themselves: GGUF metadata like
// a real file (architecture, hyperparameters, a byte-level BPE vocabulary with a few
// merges and control tokens), quantized weights. Runs in milliseconds.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "spillway/core/types.h"

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
  // For error tests: metadata and tensors as a broken or unsupported file would have them.
  std::string architecture = "llama";
  std::string rope_scaling_type;  // written as llama.rope.scaling.type when not empty
  std::string omit_tensor;        // a tensor name left out
  std::string misshape_tensor;    // a 2-D tensor written with its dimensions swapped
};

// Vocabulary: the 256 byte tokens (GPT-2 byte-to-unicode pieces), the merges "Ġ t",
// "h e", "e r" and their results, then the control tokens <|endoftext|> (BOS/EOS),
// <|im_start|>, <|im_end|>. tokenizer.ggml.pre = "gpt2".
inline constexpr int64_t kTinyVocab = 256 + 3 + 3;

// Writes the model to dir/name and returns the path.
std::string write_tiny_model(const std::filesystem::path& dir, const TinyModelSpec& spec = {},
                             const std::string& name = "tiny.gguf");

}  // namespace spillway::test
