#!/usr/bin/env bash
# CLI test of `spillway generate`. $1 = spillway binary, $2 = source directory.
set -uo pipefail
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN" generate --model "$MODEL" >/dev/null 2>&1
check "no prompt exits 2" 2 $?
"$BIN" generate --model "$MODEL" --prompt "hi" --policy "window:x" >/dev/null 2>&1
check "bad policy exits 2" 2 $?
"$BIN" generate --model "$MODEL" --prompt "hi" --temp -1 >/dev/null 2>"$TMP/err"
check "negative temperature exits 2" 2 $?
"$BIN" generate --model "$MODEL" --prompt "hi" --top-p 1.5 >/dev/null 2>&1
check "top-p above 1 exits 2" 2 $?
"$BIN" generate --model "$TMP/none.gguf" --prompt "hi" >/dev/null 2>&1
check "missing model exits 1" 1 $?

if [[ ! -f $MODEL ]]; then
  echo "skip: model checks ($MODEL missing; run scripts/setup.sh)"
  exit $fail
fi

"$BIN" generate --model "$MODEL" --prompt "" >/dev/null 2>&1
check "empty prompt exits 2" 2 $?
"$BIN" generate --model "$MODEL" --prompt "one two three four five six seven eight nine ten" \
  --policy window:4 >/dev/null 2>"$TMP/err"
check "prompt longer than the cache exits 2" 2 $?
check "prompt longer than the cache message" 1 "$(grep -c "^error: generate: the prompt has .* tokens but the cache of policy 'window:4' holds 4" "$TMP/err")"

out=$("$BIN" generate --model "$MODEL" --prompt "The capital of France is" -n 4 -t 2)
check "greedy continuation" "The capital of France is Paris." "$(head -1 <<<"$out")"
a=$("$BIN" generate --model "$MODEL" --prompt "Once upon a time" -n 12 --temp 0.9 --top-k 40 --seed 3)
b=$("$BIN" generate --model "$MODEL" --prompt "Once upon a time" -n 12 --temp 0.9 --top-k 40 --seed 3)
check "same seed, same output" "$a" "$b"
c=$("$BIN" generate --model "$MODEL" --prompt "Once upon a time" -n 12 --temp 0.9 --top-k 40 --seed 3 --policy sink:4+60)
check "sink policy with room for everything equals full" "$a" "$c"
out=$("$BIN" generate --model "$MODEL" --chat --prompt "Say hello." -n 8)
check "chat runs" 0 $?

# A stop string across two tokens ("!" and " I"), after a character of three tokens (the
# emoji, which the model copies): the text ends before the stop string, the emoji whole.
# The expectation comes from the same run without the stop string, so it holds whatever
# the model writes.
EMOJI_PROMPT="I love pizza 😀! I love pasta 😀! I love cake"
check "the stop string is two tokens" 2 \
  "$("$BIN" tokenize --model "$MODEL" --text '! I' --no-bos --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')"
"$BIN" generate --model "$MODEL" --prompt "$EMOJI_PROMPT" -n 12 -t 2 >"$TMP/whole.txt"
"$BIN" generate --model "$MODEL" --prompt "$EMOJI_PROMPT" -n 12 -t 2 --stop "! I" --stats \
  >"$TMP/cut.txt" 2>"$TMP/err"
check "stop string across two tokens: the text up to it, whole characters" "True True" \
  "$(python3 - "$TMP/whole.txt" "$TMP/cut.txt" "$TMP/err" <<'PY'
import sys
whole = open(sys.argv[1], encoding="utf-8").read()[:-1]
cut = open(sys.argv[2], encoding="utf-8").read()[:-1]  # strict UTF-8: a split character fails
stats = open(sys.argv[3]).read()
at = whole.find("! I", len("I love pizza 😀! I love pasta 😀! I love cake"))
want, reason = (whole[:at], "stop: stop;") if at >= 0 else (whole, "stop: length;")
print(cut == want, reason in stats)
PY
)"
check "the model copies the emoji here (the stop string is met)" 1 \
  "$(grep -c "cake 😀! I" "$TMP/whole.txt")"
"$BIN" generate --model "$MODEL" --prompt "hi" --stop "" >/dev/null 2>"$TMP/err"
check "empty stop string exits 2" 2 $?
exit $fail
