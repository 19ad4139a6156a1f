// stream_perplexity: streams a text file through the default model under a KV-cache policy
// and prints its perplexity. The library as a program meets it:
//
//   stream_perplexity [TEXT [POLICY [MAX_TOKENS [MODEL]]]]
//   stream_perplexity data/austen.txt sink:4+1020 4096
#include <spillway/core/error.h>
#include <spillway/model/model.h>
#include <spillway/session/perplexity.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

int main(int argc, char** argv) {
  const std::string text_path = argc > 1 ? argv[1] : "data/austen.txt";
  const std::string policy = argc > 2 ? argv[2] : "sink:4+1020";
  const long max_tokens = argc > 3 ? std::stol(argv[3]) : 4096;
  const std::string model_path = argc > 4 ? argv[4] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  try {
    std::ifstream in(text_path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "error: cannot open '%s'\n", text_path.c_str());
      return 1;
    }
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

    // Load once; a model is immutable and can serve many sessions.
    auto model = spillway::model::Model::load(model_path);
    std::vector<spillway::TokenId> tokens = model->tokenizer().encode(text);
    if (max_tokens > 0 && static_cast<long>(tokens.size()) > max_tokens) tokens.resize(max_tokens);

    spillway::PerplexityOptions opts;
    opts.policy = spillway::kv::PolicySpec(
        policy);  // "full", "window:1024", "sink:4+1020", "recompute:1024", ...
    opts.progress = [](int64_t done, int64_t total) {
      std::fprintf(stderr, "\r%lld/%lld tokens", static_cast<long long>(done),
                   static_cast<long long>(total));
    };
    const spillway::PerplexityResult r = spillway::evaluate_perplexity(*model, tokens, opts);
    std::fprintf(stderr, "\n");
    std::printf("%s: %lld tokens, perplexity %.3f (mean NLL %.4f), %.1f tokens/s, KV %.1f MiB\n",
                r.spec.c_str(), static_cast<long long>(r.tokens), r.ppl, r.mean_nll, r.tokens_per_s,
                static_cast<double>(r.kv_bytes_peak) / (1 << 20));
    return 0;
  } catch (const spillway::InvalidArgument& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const spillway::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
