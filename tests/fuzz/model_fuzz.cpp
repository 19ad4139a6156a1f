// libFuzzer target for model binding on top of a parsed file: a GGUF image that the
// reader accepts goes to the architecture its general.architecture names; binding must
// succeed or throw spillway::Error (a metadata value or a tensor shape or type that lies
// is an error, not a bad read). A model that binds decodes a few tokens with a small
// window, so weights bound with a wrong shape show up under ASan.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/core/thread_pool.h"
#include "spillway/gguf/gguf.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static spillway::ThreadPool pool(1);
  try {
    auto file =
        spillway::gguf::GgufFile::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz.gguf");
    const auto arch = file->metadata().get<std::string>("general.architecture");
    std::unique_ptr<spillway::model::Model> model;
    for (const auto& a : spillway::model::architectures())
      if (a.name == arch) model = a.bind(std::move(file));
    if (!model) return 0;
    const auto& cfg = model->config();
    // Text through the model's own tokenizer, then a short stream past a window of 2.
    std::vector<spillway::TokenId> tokens = model->tokenizer().encode("the her");
    for (spillway::TokenId t = 0; tokens.size() < 5; ++t)
      tokens.push_back(static_cast<spillway::TokenId>(t % cfg.n_vocab));
    tokens.push_back(static_cast<spillway::TokenId>(cfg.n_vocab - 1));
    spillway::SessionOptions so;
    so.policy = spillway::kv::PolicySpec("sink:1+2");
    so.max_batch = 4;
    spillway::Session session(*model, so, &pool);
    session.feed(tokens);
    const float* logits = session.last_logits();
    volatile float sink = logits ? logits[cfg.n_vocab - 1] : 0.0f;
    (void)sink;
    (void)model->tokenizer().decode(tokens);
  } catch (const spillway::Error&) {
  }
  return 0;
}
