# Shared by the CLI tests: source it after setting BIN and SRC.
# Provides MODEL (default model or $SPILLWAY_MODEL), TMP (removed on exit), and two
# styles of checks: check NAME EXPECTED ACTUAL, which records a failure in $fail (0/1)
# and goes on (the script ends with `exit $fail`), or die / expect_usage_error /
# require_model, which stop at the first failure.
MODEL=${SPILLWAY_MODEL:-$SRC/models/SmolLM2-135M-Instruct.Q4_1.gguf}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
check() {  # check NAME EXPECTED ACTUAL
  if [[ "$2" != "$3" ]]; then
    printf 'FAIL %s\n  expected: %s\n  actual:   %s\n' "$1" "$2" "$3" >&2
    fail=1
  else
    printf 'ok   %s\n' "$1"
  fi
}

die() {  # die MESSAGE: report a failure and stop (exit 1)
  echo "FAIL: $*" >&2
  exit 1
}

# expect_usage_error SUBCOMMAND WHAT ARGS...: `spillway SUBCOMMAND ARGS...` exits 2 with an
# "error:" line; its stderr stays in $TMP/err.txt for further checks.
expect_usage_error() {
  local sub=$1 what=$2 rc
  shift 2
  "$BIN" "$sub" "$@" >/dev/null 2>"$TMP/err.txt"
  rc=$?
  [ "$rc" -eq 2 ] || die "$what: exit status $rc, expected 2 ($(head -c 300 "$TMP/err.txt"))"
  grep -q '^error: ' "$TMP/err.txt" || die "$what: no 'error:' line"
}

# require_model PATH: the rest of the script needs the model at PATH. Without it the
# script stops here with exit 0 ("skip"), or fails when SPILLWAY_REQUIRE_MODEL is set.
require_model() {
  [ -f "$1" ] && return 0
  [ -n "${SPILLWAY_REQUIRE_MODEL:-}" ] && die "missing $1"
  echo "skip: no model at $1 (the checks on the real model)"
  exit 0
}

# True when BINARY runs under AddressSanitizer or ThreadSanitizer (linked with their
# runtime): their allocators keep freed memory in quarantine or shadow, so resident-memory
# comparisons between two runs say nothing about the program.
sanitized_build() {
  ldd "$1" 2>/dev/null | grep -q -E 'lib(a|t)san\.so'
}
