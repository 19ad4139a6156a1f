#include "spillway/core/build_info.h"

#include "spillway_build_info.h"

namespace spillway {

const char* version() {
  return SPILLWAY_VERSION_STRING;
}

const char* source_commit() {
  return SPILLWAY_SOURCE_COMMIT;
}

}  // namespace spillway
