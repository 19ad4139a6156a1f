#!/usr/bin/env bash
# Global log options: the library is quiet by default; -v logs the model loaded and the
# kernels at info, -vv and --log-level debug the sessions, SPILLWAY_LOG_LEVEL the same,
# --log-level wins over the environment, a bad level is a usage error (exit 2); --version
# names the commit the binary was built from and its kernel family.
# Usage: log.sh SPILLWAY_BINARY SOURCE_DIR
set -u
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN" --log-level loud tokenize --text x >/dev/null 2>"$TMP/err.txt"
rc=$?
[ "$rc" -eq 2 ] || die "bad level: exit status $rc, expected 2"
grep -q "^error: --log-level: 'loud'" "$TMP/err.txt" || die "bad level: message"

# --version: the version, the commit the binary was built from, the kernel family.
version=$(SPILLWAY_ISA=scalar "$BIN" --version) || die "--version failed"
[[ $version =~ ^spillway\ 0\.1\.0\ \(commit\ ([0-9a-f]+(-dirty)?|unknown),\ kernels\ scalar\)$ ]] ||
  die "--version: '$version'"
if head=$(git -C "$SRC" rev-parse --short=12 HEAD 2>/dev/null); then
  [[ $version == *"commit $head"* ]] || die "--version: '$version' is not HEAD $head (stale build?)"
fi

model=$SRC/models/SmolLM2-135M-Instruct.Q4_1.gguf
require_model "$model"

gen() { "$BIN" "$@" --model "$model" --prompt Hi -n 2 -t 1 --policy sink:4+60 >/dev/null; }

env -u SPILLWAY_LOG_LEVEL "$BIN" generate --model "$model" --prompt Hi -n 2 -t 1 >/dev/null 2>"$TMP/err.txt" ||
  die "generate failed"
[ ! -s "$TMP/err.txt" ] || die "default: stderr not empty: $(head -c 300 "$TMP/err.txt")"

env -u SPILLWAY_LOG_LEVEL "$BIN" -v generate --model "$model" --prompt Hi -n 2 -t 1 2>"$TMP/err.txt" >/dev/null
grep -q "spillway info: loaded $model: llama" "$TMP/err.txt" || die "-v: no model line"
grep -q "spillway info: kernels: " "$TMP/err.txt" || die "-v: no kernels line"
grep -q "session:" "$TMP/err.txt" && die "-v: session line at info"

gen generate -vv 2>"$TMP/err.txt"  # after the subcommand too
grep -q "spillway debug: session: policy sink:4+60, capacity 64" "$TMP/err.txt" || die "-vv: no session line"

SPILLWAY_LOG_LEVEL=debug gen generate 2>"$TMP/err.txt"
grep -q "session:" "$TMP/err.txt" || die "SPILLWAY_LOG_LEVEL=debug: no session line"
SPILLWAY_LOG_LEVEL=debug gen generate --log-level off 2>"$TMP/err.txt"
[ ! -s "$TMP/err.txt" ] || die "--log-level off over the environment: $(head -c 300 "$TMP/err.txt")"
echo "log ok"
