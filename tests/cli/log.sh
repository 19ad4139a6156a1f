#!/usr/bin/env bash
# Global log options: the library is quiet by default; -v logs the model loaded and the
# kernels at info, -vv and --log-level debug the sessions, SPILLWAY_LOG_LEVEL the same,
# --log-level wins over the environment, a bad level is a usage error (exit 2).
# Usage: log.sh SPILLWAY_BINARY SOURCE_DIR
set -u
bin=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

"$bin" --log-level loud tokenize --text x >/dev/null 2>"$tmp/err.txt"
rc=$?
[ "$rc" -eq 2 ] || fail "bad level: exit status $rc, expected 2"
grep -q "^error: --log-level: 'loud'" "$tmp/err.txt" || fail "bad level: message"

model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  [ -n "${SPILLWAY_REQUIRE_MODEL:-}" ] && fail "missing $model"
  echo "skip: no model at $model"
  exit 0
fi

gen() { "$bin" "$@" --model "$model" --prompt Hi -n 2 -t 1 --policy sink:4+60 >/dev/null; }

env -u SPILLWAY_LOG_LEVEL "$bin" generate --model "$model" --prompt Hi -n 2 -t 1 >/dev/null 2>"$tmp/err.txt" ||
  fail "generate failed"
[ ! -s "$tmp/err.txt" ] || fail "default: stderr not empty: $(head -c 300 "$tmp/err.txt")"

env -u SPILLWAY_LOG_LEVEL "$bin" -v generate --model "$model" --prompt Hi -n 2 -t 1 2>"$tmp/err.txt" >/dev/null
grep -q "spillway info: loaded $model: llama" "$tmp/err.txt" || fail "-v: no model line"
grep -q "spillway info: kernels: " "$tmp/err.txt" || fail "-v: no kernels line"
grep -q "session:" "$tmp/err.txt" && fail "-v: session line at info"

gen generate -vv 2>"$tmp/err.txt"  # after the subcommand too
grep -q "spillway debug: session: policy sink:4+60, capacity 64" "$tmp/err.txt" || fail "-vv: no session line"

SPILLWAY_LOG_LEVEL=debug gen generate 2>"$tmp/err.txt"
grep -q "session:" "$tmp/err.txt" || fail "SPILLWAY_LOG_LEVEL=debug: no session line"
SPILLWAY_LOG_LEVEL=debug gen generate --log-level off 2>"$tmp/err.txt"
[ ! -s "$tmp/err.txt" ] || fail "--log-level off over the environment: $(head -c 300 "$tmp/err.txt")"
echo "log ok"
