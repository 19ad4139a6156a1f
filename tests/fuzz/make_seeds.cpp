// Writes seed inputs for the fuzz targets (scripts/fuzz.sh runs it):
//   make_seeds DIR  ->  DIR/gguf, DIR/model, DIR/tokenizer, DIR/policy, DIR/session_state
// gguf: small valid files covering every value type and a few tensor types; model: tiny
// llama and gemma3 models (tests/util/tiny_model) and variants whose metadata and tensor
// table pass the reader but disagree with each other; tokenizer: texts and id lists with
// the mode byte tokenizer_fuzz.cpp reads first; policy: every registered form with a
// stream script; session_state: the saved state of every policy of session_state.h after
// a few tokens (the policy byte first, the checksum left off as the target expects).
#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "session_state.h"
#include "spillway/core/types.h"
#include "spillway/gguf/gguf.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/gguf_writer.h"
#include "util/tiny_model.h"

namespace fs = std::filesystem;
using spillway::DType;
using spillway::gguf::Array;
using spillway::gguf::Value;
using spillway::gguf::ValueType;
using spillway::test::GgufWriter;
using spillway::test::TinyModelSpec;

namespace {

void put(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}
void put(const fs::path& p, const std::vector<uint8_t>& bytes) {
  put(p, std::string(bytes.begin(), bytes.end()));
}

void gguf_seeds(const fs::path& dir) {
  GgufWriter w;
  w.add_str("general.architecture", "llama");
  w.add("u8", Value(uint8_t{7}));
  w.add("i8", Value(int8_t{-7}));
  w.add("u16", Value(uint16_t{700}));
  w.add("i16", Value(int16_t{-700}));
  w.add_u32("u32", 70000);
  w.add_i32("i32", -70000);
  w.add_f32("f32", 0.5f);
  w.add_bool("bool", true);
  w.add_u64("u64", uint64_t{1} << 40);
  w.add("i64", Value(int64_t{-1} << 40));
  w.add("f64", Value(0.25));
  w.add_strings("strings", {"<s>", "</s>", "a", "b"});
  w.add_i32s("ints", {1, 2, 3});
  w.add_f32s("floats", {1.0f, -2.0f});
  Array inner{ValueType::UINT8, {Value(uint8_t{1}), Value(uint8_t{2})}};
  w.add("nested", Value(Array{ValueType::ARRAY, {Value(inner), Value(inner)}}));
  w.add_tensor("f32", {8, 2}, std::vector<float>(16, 0.5f));
  w.add_tensor("q8", DType::Q8_0, {32, 1}, std::vector<uint8_t>(34, 1));
  w.add_tensor("q4k", DType::Q4_K, {256, 1}, std::vector<uint8_t>(144, 1));
  put(dir / "all_types.gguf", w.bytes());
  w.set_version(2);
  put(dir / "v2.gguf", w.bytes());
  GgufWriter a;
  a.set_alignment(64);
  a.add_str("general.architecture", "gemma3");
  a.add_tensor("t", DType::F16, {4, 4}, std::vector<uint8_t>(32, 0));
  a.add_tensor("u", DType::BF16, {4}, std::vector<uint8_t>(8, 0));
  put(dir / "aligned64.gguf", a.bytes());
  put(dir / "empty.gguf", GgufWriter().bytes());
}

void model_seeds(const fs::path& dir) {
  TinyModelSpec s = spillway::test::small_spec();
  s.n_ctx = 64;
  s.matrix_type = DType::Q8_0;
  const auto one = [&](const TinyModelSpec& spec, const std::string& name) {
    spillway::test::write_tiny_model(dir, spec, name);
  };
  one(s, "llama.gguf");
  TinyModelSpec g = s;
  g.architecture = "gemma3";
  g.n_layer = 2;
  g.head_dim = 16;
  g.sliding_window = 4;
  g.swa_pattern = 2;
  one(g, "gemma3.gguf");
  // Metadata and tensor table that disagree (the reader accepts each of these).
  TinyModelSpec m = s;
  m.misshape_tensor = "blk.0.attn_k.weight";
  one(m, "misshaped_k.gguf");
  m.misshape_tensor = "blk.0.ffn_down.weight";
  one(m, "misshaped_ffn_down.gguf");
  TinyModelSpec o = s;
  o.omit_tensor = "blk.0.attn_v.weight";
  one(o, "missing_v.gguf");
  TinyModelSpec h = s;
  h.head_dim = 32;  // key_length that differs from embedding_length / head_count
  one(h, "head_dim_32.gguf");
}

void tokenizer_seeds(const fs::path& dir) {
  const std::vector<std::string> texts = {
      "It is a truth universally acknowledged, that a single man in possession of a good "
      "fortune, must be in want of a wife.\n\n\"My dear Mr. Bennet,\" said his lady",
      "  leading spaces, trailing spaces   \t\r\n\r\n  ",
      "<|im_start|>user\nhello<|im_end|>\n<start_of_turn>model\nhi<end_of_turn>",
      "1234567890 3.14159 1,000,000 $42.00 100%",
      "caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 "
      "\xd0\x9f\xd1\x80\xd0\xb8",
      "\xff\xfe\x80\xc3\x28\xe2\x82\x28\xf0\x90\x28\xbc \xed\xa0\x80 \xc0\xaf",
      "don't I'll we've they're SHE'S it's",
      std::string(300, ' ') + std::string(300, 'a') + std::string(300, '\n') +
          std::string(300, '9') + std::string(100, '!'),
      "\xe2\x96\x81\xe2\x96\x81 <0x41> <unk> <s></s>",
  };
  int i = 0;
  for (const auto& t : texts)
    for (char mode = 0; mode < 4; ++mode)
      put(dir / fmt::format("text{}_{}", i, int(mode)), mode + t), ++i;
  const std::vector<int32_t> ids = {0,     1,     2,  3,      198,    256,       1000,
                                    49151, 49152, -1, 262143, 262144, 2147483647};
  std::string b;
  for (int32_t id : ids) b.append(reinterpret_cast<const char*>(&id), 4);
  for (char mode = 4; mode < 8; ++mode) put(dir / fmt::format("ids_{}", int(mode)), mode + b);
}

void policy_seeds(const fs::path& dir) {
  const std::vector<std::string> specs = {"full",
                                          "window:8",
                                          "sink:4+8",
                                          "sink:2+4,evict=turn",
                                          "recompute:4",
                                          "detected:2+4",
                                          "detected:2+4,pick=first",
                                          "nullsink:4",
                                          "nullsink:4,calib=const:0.5",
                                          "nullsink:4,calib=first:2",
                                          "h2o:2+4",
                                          "tova:6",
                                          "sink:4+8,positions=absolute,kv=f16,local=policy",
                                          "window:8,kv=f32,local=native"};
  std::string script(1, '\x03');
  for (int k = 0; k < 40; ++k) script += static_cast<char>(k % 5 == 4 ? 0xf0 : k);
  int i = 0;
  for (const auto& s : specs) put(dir / fmt::format("spec{}", i++), s + '\0' + script);
}

}  // namespace

void session_state_seeds(const fs::path& dir) {
  const fs::path model_path =
      spillway::test::write_tiny_model(dir, spillway::fuzz::session_state_model(), "tiny.gguf");
  const auto model = spillway::model::Model::load(model_path.string());
  const auto& policies = spillway::fuzz::kSessionStatePolicies;
  for (size_t i = 0; i < policies.size(); ++i) {
    for (const int64_t n : {5, 19}) {
      spillway::SessionOptions so;
      so.policy = spillway::kv::PolicySpec(policies[i]);
      so.max_batch = spillway::fuzz::kSessionStateMaxBatch;
      so.threads = 1;
      spillway::Session s(*model, so);
      const std::vector<spillway::TokenId> tokens = spillway::test::random_tokens(n, 3 + i);
      s.mark_turn_start(0);
      s.feed(std::span<const spillway::TokenId>(tokens.data(), 3));
      s.mark_turn_start(3);
      s.feed(std::span<const spillway::TokenId>(tokens.data() + 3, tokens.size() - 3));
      const std::string state = s.save_state();
      put(dir / fmt::format("state-{}-{}", i, n),
          std::string(1, static_cast<char>(i)) + state.substr(0, state.size() - 8));
    }
  }
  fs::remove(model_path);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fmt::print(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const fs::path root(argv[1]);
  for (const char* t : {"gguf", "model", "tokenizer", "policy", "session_state"})
    fs::create_directories(root / t);
  gguf_seeds(root / "gguf");
  model_seeds(root / "model");
  tokenizer_seeds(root / "tokenizer");
  policy_seeds(root / "policy");
  session_state_seeds(root / "session_state");
  return 0;
}
