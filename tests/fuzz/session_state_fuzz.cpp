// libFuzzer target for the session-state reader (Session::load_state): the input is a
// policy byte (session_state.h), then a saved state without its trailing checksum, which
// the target appends, so that the fuzzer explores what lies behind the checksum rather
// than the checksum itself. A state must load or throw spillway::Error (the session is
// then reset, at stream index 0). One that loads must save again into a state that loads
// into a fresh session, and decode 3 tokens, or stop at a limit of its policy with
// spillway::Error.
#include <unistd.h>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "session_state.h"
#include "spillway/core/error.h"
#include "spillway/core/serial.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"

namespace {

const spillway::model::Model& tiny_model() {
  static const auto model = [] {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("spillway-fuzz-state-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto m = spillway::model::Model::load(
        spillway::test::write_tiny_model(dir, spillway::fuzz::session_state_model(), "tiny.gguf"));
    std::filesystem::remove_all(dir);  // the model is read whole or mapped by now
    return m;
  }();
  return *model;
}

std::unique_ptr<spillway::Session> make_session(const char* spec) {
  spillway::SessionOptions so;
  so.policy = spillway::kv::PolicySpec(spec);
  so.max_batch = spillway::fuzz::kSessionStateMaxBatch;
  so.threads = 1;
  return std::make_unique<spillway::Session>(tiny_model(), so);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto& policies = spillway::fuzz::kSessionStatePolicies;
  const char* spec = policies[data[0] % policies.size()];
  std::string state(reinterpret_cast<const char*>(data + 1), size - 1);
  const uint64_t sum = spillway::fnv1a64(state);
  state.append(reinterpret_cast<const char*>(&sum), sizeof(sum));

  auto session = make_session(spec);
  try {
    session->load_state(state, "fuzz");
  } catch (const spillway::Error&) {
    if (session->n_past() != 0) __builtin_trap();  // a refused state leaves the session reset
    return 0;
  }
  // What loaded saves again, and that loads.
  const std::string again = session->save_state();
  auto fresh = make_session(spec);
  try {
    fresh->load_state(again, "fuzz (saved again)");
  } catch (const spillway::Error&) {
    __builtin_trap();
  }
  if (fresh->n_past() != session->n_past()) __builtin_trap();
  const spillway::TokenId tokens[3] = {1, 2, 3};
  try {
    session->feed(std::span<const spillway::TokenId>(tokens, 3));
  } catch (const spillway::Error&) {
  }
  return 0;
}
