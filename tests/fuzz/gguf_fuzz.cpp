// libFuzzer target for the GGUF reader: any input must parse or throw spillway::Error.
// Build with clang and -DSPILLWAY_FUZZ=ON (see tests/fuzz/CMakeLists.txt); run e.g.
//   build/bin/gguf_fuzz -max_total_time=60 corpus/
#include <cstddef>
#include <cstdint>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f =
        spillway::gguf::GgufFile::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz.gguf");
    // Touch what a parsed file exposes so bad views show under ASan.
    size_t sum = 0;
    for (const auto& k : f->metadata().keys()) {
      sum += spillway::gguf::format_value(*f->metadata().value(k), 16).size();
    }
    for (const auto& t : f->tensors()) {
      const auto* p = reinterpret_cast<const uint8_t*>(t.data);
      for (uint64_t i = 0; i < t.n_bytes; ++i) sum += p[i];
    }
    volatile size_t sink = sum;
    (void)sink;
  } catch (const spillway::Error&) {
  }
  return 0;
}
