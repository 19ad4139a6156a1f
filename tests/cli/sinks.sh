#!/usr/bin/env bash
# CLI test of `spillway sinks`. $1 = spillway binary, $2 = source directory.
# Usage errors are checked always; runs need the default model.
set -uo pipefail
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
printf 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. %.0s' {1..30} >"$TMP/text.txt"

usage() {  # usage NAME ERROR-PATTERN ARGS...
  local name=$1 pattern=$2
  shift 2
  "$BIN" sinks --model "$MODEL" "$@" >/dev/null 2>"$TMP/err"
  check "$name exits 2" 2 $?
  check "$name says why" 1 "$(grep -cE "^error: .*$pattern" "$TMP/err")"
}
usage "no text" "exactly one of --file and --text"
usage "both texts" "exactly one of --file and --text" --file "$TMP/text.txt" --text hi
usage "eps 0" "--eps 0 outside \(0, 1\]" --file "$TMP/text.txt" --eps 0
usage "eps 1.5" "--eps 1.5 outside \(0, 1\]" --file "$TMP/text.txt" --eps 1.5
usage "bad policy" "bad policy spec" --file "$TMP/text.txt" --policy sink:4
usage "ablate without sinks" "--ablate needs a policy that keeps sink tokens" \
  --file "$TMP/text.txt" --ablate --policy window:64
usage "recompute" "replays the window" --file "$TMP/text.txt" --policy recompute:8
usage "ablate mode unknown" "unknown sink ablation 'value'" --file "$TMP/text.txt" --ablate \
  --ablate-mode keys,value
usage "ablate mode without ablate" "--ablate-mode needs --ablate" --file "$TMP/text.txt" \
  --ablate-mode keys
usage "fit without sinks" "--fit-null imitates real sinks" --file "$TMP/text.txt" \
  --fit-null "$TMP/x.sinks" --policy window:64
usage "fit logit only alone" "--fit-logit-only needs --fit-null" --file "$TMP/text.txt" \
  --fit-logit-only
usage "fit with ablate" "--fit-null goes without --ablate" --file "$TMP/text.txt" \
  --fit-null "$TMP/x.sinks" --ablate
"$BIN" sinks --model "$MODEL" --file "$TMP/nope.txt" >/dev/null 2>"$TMP/err"
check "missing file exits 1" 1 $?

if [[ ! -f $MODEL ]]; then
  echo "skip: model checks ($MODEL missing; run scripts/setup.sh)"
  exit $fail
fi

usage "head out of range" "--head 30:0: the layer must be in \[0, 30\)" \
  --file "$TMP/text.txt" --ablate --head 30:0
usage "head malformed" "--head '3-1': expected LAYER:HEAD" --file "$TMP/text.txt" --ablate --head 3-1
usage "layer out of range" "--layer 99: outside \[0, 30\)" --file "$TMP/text.txt" --ablate --layer 99
usage "too few tokens" "the stream has [0-9]+ tokens; [0-9]+ are needed" \
  --text "short text" --tokens 64
usage "too few tokens for the window" "the stream has [0-9]+ tokens; [0-9]+ are needed" \
  --file "$TMP/text.txt" --ablate --policy sink:4+2000

"$BIN" sinks --model "$MODEL" --file "$TMP/text.txt" --tokens 48 -t 2 --json "$TMP/s.json" \
  >"$TMP/out" 2>"$TMP/err"
check "run exits 0" 0 $?
check "prints the sink rate" 1 "$(grep -c '^sink rate (alpha_1 > 0.3): ' "$TMP/out")"
check "a row per layer" 30 "$(grep -cE '^ +[0-9]+ +- ' "$TMP/out")"
python3 - "$TMP/s.json" <<'PY' || fail=1
import json, sys
d = json.load(open(sys.argv[1]))
assert 0 <= d["sink_rate"]["first_64"] <= 100, d["sink_rate"]
assert len(d["alpha1"]) == 30 and len(d["alpha1"][0]) == 9
assert len(d["hidden_norm"]) == 31 and len(d["hidden_norm"][0]) == 48
for row in d["mass_by_stream"]:
    assert abs(sum(row) - 1.0) < 1e-3, sum(row)  # shares of all mass
print("ok   json fields")
PY

"$BIN" sinks --model "$MODEL" --file "$TMP/text.txt" --tokens 16 -t 2 --ablate \
  --policy sink:2+30 --score-tokens 8 --head 3:1 --head 12:4 --json "$TMP/a.json" \
  >"$TMP/out" 2>"$TMP/err"
check "ablation of two heads exits 0" 0 $?
python3 - "$TMP/a.json" <<'PY' || fail=1
import json, sys
a = json.load(open(sys.argv[1]))["ablation"]
assert a["scored_tokens"] == 8, a["scored_tokens"]
done = [(l, h) for l, row in enumerate(a["head_delta"]) for h, x in enumerate(row) if x is not None]
assert done == [(3, 1), (12, 4)], done
print("ok   ablation json")
PY

"$BIN" sinks --model "$MODEL" --file "$TMP/text.txt" --tokens 16 -t 2 --ablate \
  --policy sink:2+30 --score-tokens 8 --head 12:4 --ablate-mode all --json "$TMP/m.json" \
  >"$TMP/out" 2>"$TMP/err"
check "ablation in every mode exits 0" 0 $?
check "a row per mode" 4 "$(grep -cE '^    (drop|keys|values|logit) ' "$TMP/out")"
python3 - "$TMP/m.json" <<'PY' || fail=1
import json, sys
a = json.load(open(sys.argv[1]))["ablation"]
assert [m["mode"] for m in a["modes"]] == ["drop", "keys", "values", "logit"], a["modes"]
assert a["mode"] == "drop" and a["all_heads_delta"] == a["modes"][0]["all_heads_delta"]
assert a["modes"][1]["head_delta"][12][4] is not None
assert a["sink_logit_mean"][12][4] is not None
print("ok   ablation modes json")
PY

# Virtual sinks fitted, used, and refused when the file is broken (exit 1, the file named).
"$BIN" sinks --model "$MODEL" --file "$TMP/text.txt" --tokens 64 -t 2 --policy sink:2+30 \
  --fit-null "$TMP/fit.sinks" --json "$TMP/f.json" >"$TMP/out" 2>"$TMP/err"
check "fit exits 0" 0 $?
check "fit prints a row per layer" 30 "$(grep -cE '^ +[0-9]+ +[0-9.]+ ' "$TMP/out")"
check "fit json" 1 "$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['fit']['samples'] == 33))" "$TMP/f.json")"
"$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" --max-tokens 80 -t 2 \
  -p "nullsink:30,fit=$TMP/fit.sinks" >"$TMP/out" 2>"$TMP/err"
check "ppl with the fit exits 0" 0 $?
head -c 60 "$TMP/fit.sinks" >"$TMP/short.sinks"
"$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" --max-tokens 80 \
  -p "nullsink:30,fit=$TMP/short.sinks" >/dev/null 2>"$TMP/err"
check "truncated fit exits 1" 1 $?
check "truncated fit says why" 1 "$(grep -cE "^error: $TMP/short.sinks: .*truncated" "$TMP/err")"
printf 'GGUF' | dd of="$TMP/fit.sinks" bs=1 conv=notrunc 2>/dev/null
"$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" --max-tokens 80 \
  -p "nullsink:30,fit=$TMP/fit.sinks" >/dev/null 2>"$TMP/err"
check "bad magic exits 1" 1 $?
check "bad magic says why" 1 "$(grep -cE "^error: $TMP/fit.sinks: .*bad magic" "$TMP/err")"
exit $fail
