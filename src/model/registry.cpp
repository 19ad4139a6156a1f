// The architecture registry: adding an architecture is one folder under src/model/ plus
// one line here.
#include "gemma3/gemma3.h"
#include "llama/llama.h"

namespace spillway::model {

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> kinds = {
      {"llama", llama::bind},
      {"gemma3", gemma3::bind},
  };
  return kinds;
}

}  // namespace spillway::model
