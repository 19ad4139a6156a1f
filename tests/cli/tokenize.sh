#!/usr/bin/env bash
# CLI test of `spillway tokenize`. $1 = spillway binary, $2 = source directory.
# Usage and file errors are checked always; token ids need the default model (or
# $SPILLWAY_MODEL) and are skipped without it.
set -uo pipefail
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN" tokenize --model "$MODEL" --file "$TMP/does-not-exist.txt" >"$TMP/out" 2>"$TMP/err"
check "missing file exits 1" 1 $?
check "missing file message" 1 "$(grep -c '^error: .*does-not-exist.txt' "$TMP/err")"
"$BIN" tokenize --model "$MODEL" >/dev/null 2>&1
check "no text exits 2" 2 $?
"$BIN" tokenize --model "$MODEL" --text a --file "$TMP/x" >/dev/null 2>&1
check "--text with --file exits 2" 2 $?
"$BIN" tokenize --model "$TMP/no-model.gguf" --text hi >/dev/null 2>"$TMP/err"
check "missing model exits 1" 1 $?

if [[ ! -f $MODEL ]]; then
  echo "skip: model checks ($MODEL missing; run scripts/setup.sh)"
  exit $fail
fi

ids() { python3 -c 'import json,sys; print(" ".join(str(t["id"]) for t in json.load(sys.stdin)["tokens"]))'; }

out=$("$BIN" tokenize --model "$MODEL" --text "It is a truth universally acknowledged" --json)
check "prose ids" "1589 314 253 4569 21902 14494" "$(ids <<<"$out")"
check "prose count" 6 "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])' <<<"$out")"
check "piece and text" "Ġtruth| truth" "$(python3 -c 'import json,sys; t=json.load(sys.stdin)["tokens"][3]; print(t["piece"]+"|"+t["text"])' <<<"$out")"

out=$("$BIN" tokenize --model "$MODEL" --text $'<|im_start|>user\nhi<|im_end|>' --json --special)
check "chat ids with --special" "1 4093 198 6004 2" "$(ids <<<"$out")"
out=$("$BIN" tokenize --model "$MODEL" --text "<|im_end|>" --json)
check "special off" "44 108 306 79 486 108 46" "$(ids <<<"$out")"
out=$("$BIN" tokenize --model "$MODEL" --text "12345678" --json --bos)
check "digits with --bos" "1 33 34 35 36 37 38 39 40" "$(ids <<<"$out")"
"$BIN" tokenize --model "$MODEL" --text "x" --bos --no-bos >/dev/null 2>&1
check "--bos with --no-bos exits 2" 2 $?
# BOS follows the model's metadata: SmolLM2 asks for none (above), Gemma 3 for one.
GEMMA=${SPILLWAY_GEMMA3_MODEL:-$SRC/models/gemma-3-270m-q4_k_m.gguf}
if [[ -f $GEMMA ]]; then
  check "gemma: BOS by default" "2 9259" "$("$BIN" tokenize --model "$GEMMA" --text "Hello" --json | ids)"
  check "gemma: --no-bos" "9259" "$("$BIN" tokenize --model "$GEMMA" --text "Hello" --json --no-bos | ids)"
fi

out=$("$BIN" tokenize --model "$MODEL" --text "" --json)
check "empty text" '{"tokens":[],"count":0}' "$out"
out=$("$BIN" tokenize --model "$MODEL" --text "")
check "empty text (table)" "0 tokens" "$out"

printf 'Hello world' >"$TMP/in.txt"
out=$("$BIN" tokenize --model "$MODEL" --file "$TMP/in.txt")
check "file, table" $'19556\tHello\tHello\n905\tĠworld\t world\n2 tokens' "$out"

exit $fail
