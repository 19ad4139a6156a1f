#!/usr/bin/env bash
# Runs every test of spillway: the command the README gives and CI runs.
#
#   scripts/test.sh [--no-asan] [--no-tsan] [--no-consumer] [--no-python]
#
# 1. scripts/setup.sh --model gemma3-270m (packages, both models, corpus; does nothing
#    when all is in place)
# 2. Release build in build/ and all ctest tests (unit, cli, model); model tests fail
#    instead of skipping when the model or the corpus is missing
# 3. AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/, unit and cli tests;
#    ThreadSanitizer build in build-tsan/ of the concurrency tests (the thread pool, sessions
#    sharing a model, the batched decoder, the server's scheduler, the log: label
#    `concurrency`; scripts/tsan.sh runs every unit test under TSan). Both sanitizer builds
#    compile at -O1 -g1, the level the sanitizers' documentation suggests.
# 4. install of build/ into a temporary prefix, and the find_package(spillway) consumer
#    project in tests/consumer/ built and run against it
# 5. the Python package: `pip install .` into the venv build-py/venv (the module's CMake
#    build stays in build-py/ for the next run) with the sweep extra (pandas, pyarrow,
#    Ray), then its pytest suite in python/tests/ (numbers compared with
#    build/bin/spillway; the sweeps run in a pool and on a local Ray instance)
#
# Environment: JOBS (parallel build and test jobs, default 2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JOBS=${JOBS:-2}
run_asan=1
run_tsan=1
run_consumer=1
run_python=1
for arg in "$@"; do
  case $arg in
    --no-asan) run_asan=0 ;;
    --no-tsan) run_tsan=0 ;;
    --no-consumer) run_consumer=0 ;;
    --no-python) run_python=0 ;;
    -h | --help)
      sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: $0 [--no-asan] [--no-tsan] [--no-consumer] [--no-python]" >&2
      exit 2
      ;;
  esac
done

cd "$ROOT"
# Sanitizer builds: -O1 (the sanitizers' suggestion; -O2 took the AVX2 matrix kernels to
# over 100 s each under ASan and UBSan) with line tables for the reports.
sanitizer_opt="-O1 -g1 -DNDEBUG"
t_start=$SECONDS
stage_start=$SECONDS
stages=()
stage() {
  stage_start=$SECONDS
  printf '\n=== test: %s\n' "$*"
}
stage_done() { stages+=("$1 $((SECONDS - stage_start))s"); }

stage "setup"
scripts/setup.sh --model gemma3-270m
stage_done setup

stage "Release build (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$JOBS"
stage_done build

stage "all tests (ctest, SPILLWAY_REQUIRE_MODEL=1, SPILLWAY_GOLDEN_F64=1)"
# SPILLWAY_GOLDEN_F64=1: the golden tests also check that this engine is no farther than
# llama.cpp from an unrounded f64 forward pass (about 1.5 minutes of one core).
SPILLWAY_REQUIRE_MODEL=1 SPILLWAY_GOLDEN_F64=${SPILLWAY_GOLDEN_F64:-1} \
  ctest --test-dir build --output-on-failure -j "$JOBS"
stage_done tests

if [[ $run_asan -eq 1 ]]; then
  stage "sanitizer build (build-asan/: address;undefined)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitizer_opt" -DSPILLWAY_SANITIZE='address;undefined' \
    -DSPILLWAY_BUILD_BENCH=OFF -DSPILLWAY_BUILD_EXAMPLES=OFF
  cmake --build build-asan -j "$JOBS" --target spillway_tests spillway_cli \
    fuzz_replay_gguf fuzz_replay_model fuzz_replay_tokenizer fuzz_replay_policy \
    fuzz_replay_chat_template fuzz_replay_http_request fuzz_replay_session_state
  stage_done asan-build

  stage "unit and cli tests under the sanitizers"
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_stack_use_after_return=1:strict_string_checks=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir build-asan --output-on-failure -j "$JOBS" -L 'unit|cli'
  stage_done asan-tests
fi

if [[ $run_tsan -eq 1 ]]; then
  stage "ThreadSanitizer build of the concurrency tests (build-tsan/)"
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitizer_opt" -DSPILLWAY_SANITIZE=thread \
    -DSPILLWAY_BUILD_BENCH=OFF -DSPILLWAY_BUILD_EXAMPLES=OFF
  cmake --build build-tsan -j "$JOBS" --target spillway_concurrency_tests
  stage_done tsan-build

  stage "concurrency tests under ThreadSanitizer"
  TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1} \
    ctest --test-dir build-tsan --output-on-failure -j "$JOBS" -L concurrency
  stage_done tsan-tests
fi

if [[ $run_consumer -eq 1 ]]; then
  stage "install + find_package consumer (tests/consumer/)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cmake --install build --prefix "$tmp/prefix" >/dev/null
  cmake -S tests/consumer -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$tmp/prefix"
  cmake --build "$tmp/build" -j "$JOBS"
  "$tmp/build/spillway_consumer" | tee "$tmp/consumer.out"
  grep -qx 'consumer ok' "$tmp/consumer.out"
  stage_done consumer
fi

if [[ $run_python -eq 1 ]]; then
  stage "Python package (pip install . into build-py/venv) and python/tests (pytest)"
  [[ -x build-py/venv/bin/python ]] || python3 -m venv build-py/venv
  # The build tools live in the venv (no isolated build environment), so that their paths
  # stay the same and a second run rebuilds only what changed.
  build-py/venv/bin/python -m pip install --quiet --disable-pip-version-check \
    "scikit-build-core>=0.10" "nanobind>=2.4" pytest numpy selenium
  CMAKE_BUILD_PARALLEL_LEVEL=$JOBS build-py/venv/bin/python -m pip install --quiet \
    --disable-pip-version-check --no-build-isolation ".[sweep]"
  # The browser and balancer tests need chromium, chromium-driver and nginx (setup.sh
  # installs them); where they are missing they skip with the reason, except on CI.
  web=0
  if [[ ${CI:-} == true ]] || { command -v chromium && command -v nginx; } >/dev/null 2>&1; then
    web=1
  else
    echo "note: chromium or nginx not installed: the serve page and balancer tests will skip"
  fi
  SPILLWAY_REQUIRE_MODEL=1 SPILLWAY_REQUIRE_SWEEP=1 SPILLWAY_REQUIRE_WEB=$web \
    SPILLWAY_CLI="$ROOT/build/bin/spillway" \
    build-py/venv/bin/python -m pytest -q python/tests
  stage_done python
fi

summary=$(printf '%s, ' "${stages[@]}")
printf '\n=== test: all passed in %ds (%s)\n' "$((SECONDS - t_start))" "${summary%, }"
