// Compiled once so the header is checked on its own.
#include "util/paths.h"
