#!/usr/bin/env bash
# ThreadSanitizer build of spillway (build-tsan/, -O1 -g1, -DSPILLWAY_SANITIZE=thread)
# and the thread-safety tests under it: every unit test (the thread pool, the log, the
# batched decoder, the server's scheduler, and tests/unit/thread_safety_test.cpp: threads
# each running a Session on one shared model) and, when the default model is present, the
# model-labelled thread-safety test (tests/model/thread_safety_model_test.cpp).
#
#   scripts/tsan.sh [--unit-only]
#
# Environment: JOBS (parallel build and test jobs, default 2), TSAN_OPTIONS (default
# halt_on_error=1:second_deadlock_stack=1). Exits non-zero on any race report.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JOBS=${JOBS:-2}
model_test=1
for arg in "$@"; do
  case $arg in
    --unit-only) model_test=0 ;;
    *)
      echo "usage: $0 [--unit-only]" >&2
      exit 2
      ;;
  esac
done
cd "$ROOT"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# The flags of scripts/test.sh's TSan stage, so that the two share build-tsan/.
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DSPILLWAY_SANITIZE=thread \
  -DSPILLWAY_BUILD_BENCH=OFF -DSPILLWAY_BUILD_EXAMPLES=OFF \
  "${launcher[@]}" >/dev/null
targets=(spillway_tests)
[[ $model_test -eq 1 ]] && targets+=(spillway_model_tests)
cmake --build build-tsan -j "$JOBS" --target "${targets[@]}"
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
ctest --test-dir build-tsan --output-on-failure -j "$JOBS" -L unit
if [[ $model_test -eq 1 ]]; then
  ctest --test-dir build-tsan --output-on-failure -R 'ThreadSafetyModel'
fi
echo "tsan: clean"
