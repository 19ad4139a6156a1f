// What build of the library is running: its version, the source commit it was built
// from and the kernel family it chose, for results that must say where they came from.
#pragma once

namespace spillway {

// The library's version ("0.1.0").
const char* version();

// `git describe --always --dirty` of the source tree at build time ("unknown" when it was
// built outside a git checkout, e.g. from a source distribution).
const char* source_commit();

}  // namespace spillway
