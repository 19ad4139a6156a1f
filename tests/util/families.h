// The kernel families as test parameters: every family the library knows runs each
// parameterized kernel test, named by the family ("avx2", "avx512_vnni"), and is skipped
// with a message where this CPU cannot run it, so that a test log says which families
// a machine checked.
#pragma once

#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "ops/kernels.h"
#include "spillway/ops/matmul.h"

namespace spillway::ops {
// How gtest and ctest show a family parameter: by its name, not as the enum's bytes.
inline void PrintTo(KernelIsa isa, std::ostream* os) {
  *os << isa_name(isa);
}
}  // namespace spillway::ops

namespace spillway::test {

// Every SIMD family (all but the scalar reference), runnable here or not.
inline std::vector<ops::KernelIsa> simd_families() {
  std::vector<ops::KernelIsa> v;
  for (const auto* f = ops::detail::families_begin(); f != ops::detail::families_end(); ++f)
    if (f->isa != ops::KernelIsa::kScalar) v.push_back(f->isa);
  return v;
}

// gtest parameter names: the family's name with '-' as '_'.
struct FamilyName {
  std::string operator()(const testing::TestParamInfo<ops::KernelIsa>& info) const {
    std::string s = ops::isa_name(info.param);
    for (char& c : s)
      if (c == '-') c = '_';
    return s;
  }
};

// Whether this CPU runs the family; a test calls it first and returns when not.
inline bool runs_here(ops::KernelIsa isa) {
  return ops::detail::can_run(ops::detail::cpu_features(), isa);
}

}  // namespace spillway::test

// Skips the running test (with the family's name and what it needs) unless this CPU runs
// `isa`.
#define SPILLWAY_SKIP_UNLESS_RUNS(isa)                                                             \
  do {                                                                                             \
    if (!::spillway::test::runs_here(isa))                                                         \
      GTEST_SKIP() << "this CPU (or OS) cannot run the " << ::spillway::ops::isa_name(isa)         \
                   << " kernels (they need " << ::spillway::ops::detail::family(isa).needs << ")"; \
  } while (0)
