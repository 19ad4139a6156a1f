#include "util/tiny_model.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "spillway/core/quant.h"
#include "util/gguf_writer.h"

namespace spillway::test {

namespace {

// GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others map to
// U+0100 + k in byte order. Written out here independently of the tokenizer.
std::string byte_piece(int b) {
  const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
  uint32_t cp = static_cast<uint32_t>(b);
  if (!printable) {
    int k = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) ++k;
    cp = 0x100 + static_cast<uint32_t>(k);
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

std::vector<uint8_t> quantize(DType t, const std::vector<float>& v) {
  const auto bytes = row_bytes(t, v.size());
  std::vector<uint8_t> out(*bytes);
  quantize_row_ref(t, v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

}  // namespace

TinyModelSpec small_spec() {
  TinyModelSpec s;
  s.n_layer = 1;
  s.n_embd = 32;
  s.n_head = 2;
  s.n_head_kv = 1;
  s.n_ff = 32;
  return s;
}

std::string write_tiny_model(const std::filesystem::path& dir, const TinyModelSpec& s,
                             const std::string& name) {
  GgufWriter w;
  const std::string p = s.architecture + ".";
  const bool gemma = s.architecture == "gemma3";
  const int64_t hd = s.head_dim > 0 ? s.head_dim : s.n_embd / s.n_head;
  w.add_str("general.architecture", s.architecture);
  if (!s.rope_scaling_type.empty()) {
    w.add_str(p + "rope.scaling.type", s.rope_scaling_type);
    w.add_f32(p + "rope.scaling.factor", 2.0f);
  }
  w.add_str("general.name", "tiny-test");
  w.add_u32(p + "block_count", static_cast<uint32_t>(s.n_layer));
  w.add_u32(p + "context_length", static_cast<uint32_t>(s.n_ctx));
  w.add_u32(p + "embedding_length", static_cast<uint32_t>(s.n_embd));
  w.add_u32(p + "feed_forward_length", static_cast<uint32_t>(s.n_ff));
  w.add_u32(p + "attention.head_count", static_cast<uint32_t>(s.n_head));
  w.add_u32(p + "attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv));
  w.add_f32(p + "rope.freq_base", s.rope_base);
  w.add_f32(p + "attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_u32(p + "vocab_size", static_cast<uint32_t>(kTinyVocab));
  w.add_u32(p + "rope.dimension_count", static_cast<uint32_t>(hd));
  if (s.head_dim > 0) {
    w.add_u32(p + "attention.key_length", static_cast<uint32_t>(hd));
    w.add_u32(p + "attention.value_length", static_cast<uint32_t>(hd));
  }
  if (s.sliding_window > 0)
    w.add_u32(p + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
  if (s.swa_pattern > 0)
    w.add_u32(p + "attention.sliding_window_pattern", static_cast<uint32_t>(s.swa_pattern));
  if (s.rope_base_local > 0) w.add_f32(p + "rope.freq_base_swa", s.rope_base_local);

  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(byte_piece(b));
    types.push_back(1);
  }
  const std::string G = byte_piece(' ');  // "Ġ"
  for (const std::string& t : {G + "t", std::string("he"), std::string("er")}) {
    tokens.push_back(t);
    types.push_back(1);
  }
  for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    tokens.push_back(t);
    types.push_back(3);
  }
  w.add_str("tokenizer.ggml.model", "gpt2");
  w.add_str("tokenizer.ggml.pre", "gpt2");
  w.add_strings("tokenizer.ggml.tokens", tokens);
  w.add_i32s("tokenizer.ggml.token_type", types);
  w.add_strings("tokenizer.ggml.merges", {G + " t", "h e", "e r"});
  w.add_u32("tokenizer.ggml.bos_token_id", 259);
  w.add_u32("tokenizer.ggml.eos_token_id", 259);
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  w.add_str("tokenizer.chat_template",
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");

  std::mt19937_64 rng(s.seed);
  auto uniform = [&](size_t n, float a) {
    std::uniform_real_distribution<float> u(-a, a);
    std::vector<float> v(n);
    for (float& x : v) x = u(rng);
    return v;
  };
  auto matrix = [&](const std::string& tname, int64_t cols, int64_t rows, DType t) {
    const float a = s.weight_scale * 4.0f / std::sqrt(static_cast<float>(cols));
    std::vector<float> values = uniform(static_cast<size_t>(cols * rows), a);
    if (!s.zero_tensors.empty() && tname.size() >= s.zero_tensors.size() &&
        tname.compare(tname.size() - s.zero_tensors.size(), s.zero_tensors.size(),
                      s.zero_tensors) == 0)
      std::fill(values.begin(), values.end(), 0.0f);  // drawn all the same: the rest is unchanged
    auto data = quantize(t, values);
    if (tname == s.omit_tensor) return;
    if (tname == s.misshape_tensor) {
      // Same bytes, rows and columns swapped: a shape that disagrees with the metadata.
      w.add_tensor(tname, DType::F32, {rows, cols},
                   std::vector<uint8_t>(static_cast<size_t>(rows * cols) * 4));
      return;
    }
    w.add_tensor(tname, t, {cols, rows}, std::move(data));
  };
  auto norm = [&](const std::string& tname, int64_t n = 0) {
    if (n == 0) n = s.n_embd;
    std::vector<float> v = uniform(static_cast<size_t>(n), 0.2f);
    for (float& x : v) x += 1.0f;
    if (tname == s.omit_tensor) return;
    w.add_tensor(tname, {n}, v);
  };
  w.add_tensor("token_embd.weight", s.embd_type, {s.n_embd, kTinyVocab},
               quantize(s.embd_type, uniform(static_cast<size_t>(s.n_embd * kTinyVocab), 1.0f)));
  norm("output_norm.weight");
  if (!s.tied_output) matrix("output.weight", s.n_embd, kTinyVocab, s.embd_type);
  for (int64_t l = 0; l < s.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    norm(b + "attn_norm.weight");
    matrix(b + "attn_q.weight", s.n_embd, s.n_head * hd, s.matrix_type);
    matrix(b + "attn_k.weight", s.n_embd, s.n_head_kv * hd, s.matrix_type);
    matrix(b + "attn_v.weight", s.n_embd, s.n_head_kv * hd, s.matrix_type);
    matrix(b + "attn_output.weight", s.n_head * hd, s.n_embd, s.matrix_type);
    norm(b + "ffn_norm.weight");
    matrix(b + "ffn_gate.weight", s.n_embd, s.n_ff, s.matrix_type);
    matrix(b + "ffn_up.weight", s.n_embd, s.n_ff, s.matrix_type);
    matrix(b + "ffn_down.weight", s.n_ff, s.n_embd, s.matrix_type);
    if (gemma) {
      norm(b + "attn_q_norm.weight", hd);
      norm(b + "attn_k_norm.weight", hd);
      norm(b + "post_attention_norm.weight");
      norm(b + "post_ffw_norm.weight");
    }
  }
  for (const auto& [key, value] : s.replace_kv) w.replace(key, value);
  const std::string path = (dir / name).string();
  w.write(path);
  return path;
}

std::vector<TokenId> random_tokens(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<TokenId> u(0, 258);
  std::vector<TokenId> t(static_cast<size_t>(n));
  for (auto& x : t) x = u(rng);
  return t;
}

}  // namespace spillway::test
