# Shared by the CLI tests: source it after setting BIN and SRC.
# Provides MODEL (default model or $SPILLWAY_MODEL), TMP (removed on exit), fail (0/1)
# and check NAME EXPECTED ACTUAL.
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
