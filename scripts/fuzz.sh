#!/usr/bin/env bash
# Runs one libFuzzer campaign with ASan/UBSan on one core, niced.
#
#   scripts/fuzz.sh TARGET [SECONDS] [libFuzzer flags...]
#   TARGET: gguf | model | tokenizer | policy | chat_template | http_request
#   SECONDS: default 60
#   FAST=1 scripts/fuzz.sh ...   the fast harness: a release build with coverage and no
#                                sanitizers (build-fuzz-fast), several times the executions
#                                a second; replay what it finds under ASan/UBSan (copy the
#                                input to tests/fuzz/regressions/TARGET/, then ctest in
#                                build-asan runs fuzz_replay.TARGET)
#
# Configures build-fuzz with clang if needed (SPILLWAY_FUZZ_BUILD names another folder),
# builds the target, writes the seeds once (tests/fuzz/make_seeds, the real models' headers
# via scripts/fuzz-seeds.py, and the corrupt-file cases of tests/unit/gguf_corrupt_test.cpp
# when build/bin/spillway_tests exists), then fuzzes with the growing corpus in
# build-fuzz/corpus/TARGET, the seeds and the committed regression inputs, and prints the
# executions and the rate. Crash inputs land in build-fuzz/artifacts/TARGET/: fix the
# library, then copy the input to tests/fuzz/regressions/TARGET/ (ctest replays it).
set -euo pipefail
target=${1:?usage: scripts/fuzz.sh gguf|model|tokenizer|policy|chat_template|http_request|session_state [SECONDS] [flags...]}
secs=${2:-60}
shift $(($# < 2 ? $# : 2))
case $target in gguf | model | tokenizer | policy | chat_template | http_request | session_state) ;; *)
  echo "error: unknown fuzz target '$target' (gguf, model, tokenizer, policy, chat_template, http_request, session_state)" >&2
  exit 2
  ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${FAST:-0}" = 1 ]; then
  bdir=${SPILLWAY_FUZZ_BUILD:-$root/build-fuzz-fast}
  sanitize=(-DSPILLWAY_SANITIZE= -DSPILLWAY_FUZZ_SANITIZE=OFF -DCMAKE_BUILD_TYPE=Release)
else
  bdir=${SPILLWAY_FUZZ_BUILD:-$root/build-fuzz}
  sanitize=("-DSPILLWAY_SANITIZE=address;undefined" -DCMAKE_BUILD_TYPE=RelWithDebInfo)
fi
if [ ! -f "$bdir/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$bdir" -DSPILLWAY_FUZZ=ON "${sanitize[@]}" \
    -DSPILLWAY_BUILD_TESTS=OFF -DSPILLWAY_BUILD_BENCH=OFF -DSPILLWAY_BUILD_EXAMPLES=OFF \
    -DSPILLWAY_BUILD_TOOLS=OFF >/dev/null
fi
nice cmake --build "$bdir" -j"${JOBS:-2}" --target "${target}_fuzz" make_seeds >/dev/null

seeds=$bdir/seeds
if [ ! -f "$seeds/.done" ]; then
  rm -rf "$seeds"
  "$bdir/bin/make_seeds" "$seeds"
  python3 "$root/scripts/fuzz-seeds.py" "$seeds/gguf" "$root"/models/*.gguf
  if [ -x "$root/build/bin/spillway_tests" ]; then
    SPILLWAY_FUZZ_SEED_DIR="$seeds/gguf" "$root/build/bin/spillway_tests" \
      --gtest_filter='GgufCorrupt*' >/dev/null
  else
    echo "note: build/bin/spillway_tests absent: the reader's seeds leave out the corrupt-file cases" >&2
  fi
  touch "$seeds/.done"
fi
corpus=$bdir/corpus/$target
artifacts=$bdir/artifacts/$target
mkdir -p "$corpus" "$artifacts"
dirs=("$corpus")
for d in "$seeds/$target" "$root/tests/fuzz/regressions/$target" "$root/tests/fuzz/seeds/$target"; do
  [ -d "$d" ] && dirs+=("$d")
done
log=$bdir/fuzz-$target.log
# Out-of-memory and slow inputs are findings too: 2 GB and 10 s per input at most.
ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=0} \
  nice -n 10 "$bdir/bin/${target}_fuzz" -max_total_time="$secs" -print_final_stats=1 \
  -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -artifact_prefix="$artifacts/" \
  "$@" "${dirs[@]}" 2>&1 | tee "$log" | grep -E '^#[0-9]+.*(DONE|INITED)|ERROR|SUMMARY|crash-|leak-|oom-|timeout-' || true
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
echo "$target: ${execs:-?} executions in ${secs} s (${rate:-?} exec/s); corpus $(ls "$corpus" | wc -l) files; log $log"
# crash-, leak-, oom- and timeout- files are findings; slow-unit- files (an input that took
# over 10 s, often only a loaded machine) are listed for a look.
if ls "$artifacts"/slow-unit-* >/dev/null 2>&1; then
  echo "slow inputs in $artifacts:" && ls "$artifacts" | grep '^slow-unit-'
fi
if ls "$artifacts" | grep -qE '^(crash|leak|oom|timeout)-'; then
  echo "findings in $artifacts:" && ls "$artifacts" | grep -E '^(crash|leak|oom|timeout)-'
  exit 1
fi
