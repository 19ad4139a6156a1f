#!/usr/bin/env bash
# CLI test of `spillway recall` and of `spillway ppl --reference`. $1 = spillway binary,
# $2 = source directory. Usage and file errors are checked always; runs need the default
# model.
set -uo pipefail
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
printf 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. %.0s' {1..12} >"$TMP/text.txt"

usage() {  # usage NAME ERROR-PATTERN ARGS...
  local name=$1 pattern=$2
  shift 2
  "$BIN" recall --model "$MODEL" --file "$TMP/text.txt" "$@" >/dev/null 2>"$TMP/err"
  check "$name exits 2" 2 $?
  check "$name says why" 1 "$(grep -cE "^error: .*$pattern" "$TMP/err")"
}
usage "no policy" "policy" --distances 16
usage "bad probe" "--probe 'needle' is not one of copy, passkey, lines" -p full --probe needle
usage "negative distance" "distance -3 < 0" -p full --distances 16,-3
usage "no seeds" "--seeds and --chunk must be >= 1" -p full --seeds 0
usage "span of one" "--span >= 2" -p full --span 1
usage "bad policy" "bad policy spec 'sink:4'" -p sink:4
"$BIN" recall --model "$MODEL" --file "$TMP/nope.txt" -p full >/dev/null 2>"$TMP/err"
check "missing filler exits 1" 1 $?
check "missing filler named" 1 "$(grep -c "^error: .*nope.txt" "$TMP/err")"
"$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" -p window:32 --reference bogus >/dev/null \
  2>"$TMP/err"
check "bad reference exits 2" 2 $?

require_model "$MODEL"

usage "filler too short" "the filler has [0-9]+ tokens; a copy probe at distance 5000 needs" \
  -p full --distances 5000

# Copy probes at a distance inside and one past a window of 48: the window remembers the
# near span as the full cache does and forgets the far one.
"$BIN" recall --model "$MODEL" --file "$TMP/text.txt" -t 2 --lead 16 --span 8 --seeds 2 \
  --distances 16,160 -p full -p window:48 --json "$TMP/copy.json" >"$TMP/table" 2>"$TMP/err"
check "copy run exits 0" 0 $?
check "copy table has 4 rows" 4 "$(grep -cE '^(full|window:48) +(16|160) ' "$TMP/table")"
python3 - "$TMP/copy.json" <<'PY' || fail=1
import json, sys
d = json.load(open(sys.argv[1]))
assert d["probe"] == "copy" and d["seeds"] == 2 and d["span"] == 8, d
rows = {(r["spec"], r["distance"]): r for r in d["rows"]}
for k in [("full", 16), ("full", 160), ("window:48", 16), ("window:48", 160)]:
    r = rows[k]
    assert r["n"] == 2 and len(r["recall_seeds"]) == 2, r
    assert abs(r["recall"] - (1 - r["nll_repeat"] / r["nll_first"])) < 1e-9, r
# Inside the window: the same numbers as the full cache.
assert rows[("window:48", 16)]["recall"] == rows[("full", 16)]["recall"], rows
# Past it: the span is gone, where the full cache still copies it.
assert rows[("full", 160)]["recall"] > 0.5, rows[("full", 160)]
assert rows[("window:48", 160)]["recall"] < 0.2, rows[("window:48", 160)]
assert rows[("window:48", 160)]["kv_slots"] < rows[("full", 160)]["kv_slots"]
assert d["effective_context"]["window:48"] == 160 and d["effective_context"]["full"] is None, d
print("ok   copy probe: window:48 equals full at 16, forgets at 160")
PY

# Pass keys: the answers and what was expected are kept, accuracy is their share.
"$BIN" recall --model "$MODEL" --file "$TMP/text.txt" -t 2 --probe passkey --lead 16 \
  --seeds 2 --distances 32 -p full --json "$TMP/key.json" >/dev/null 2>"$TMP/err"
check "passkey run exits 0" 0 $?
python3 - "$TMP/key.json" <<'PY' || fail=1
import json, re, sys
r = json.load(open(sys.argv[1]))["rows"][0]
assert len(r["answers"]) == 2 and len(r["expected"]) == 2, r
right = sum(1 for a, e in zip(r["answers"], r["expected"])
            if (m := re.search(r"[0-9]+", a)) and m.group(0) == e)
assert abs(r["accuracy"] - right / 2) < 1e-12, r
assert all("\n" not in a.strip() for a in r["answers"]), r
print(f"ok   passkey probe: accuracy {r['accuracy']} from the answers {r['answers']}")
PY

# Divergence: the full cache against itself is KL 0 and agrees everywhere; a window of 32
# departs from it.
"$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" -t 2 --max-tokens 200 -p full -p window:32 \
  --reference full --json "$TMP/kl.json" --csv "$TMP/kl.csv" >/dev/null 2>"$TMP/err"
check "ppl --reference exits 0" 0 $?
python3 - "$TMP/kl.json" "$TMP/kl.csv" <<'PY' || fail=1
import csv, json, sys
p = {x["spec"]: x for x in json.load(open(sys.argv[1]))["policies"]}
assert p["full"]["kl_mean"] == 0 and p["full"]["top1_agree"] == 1, p["full"]
assert p["window:32"]["kl_mean"] > 0.1 and p["window:32"]["top1_agree"] < 1, p["window:32"]
rows = list(csv.DictReader(open(sys.argv[2])))
kl = [float(r[k]) for r in rows for k in r if k.startswith("kl") and "window" in k]
assert kl and min(kl) >= 0, rows[0]
print("ok   ppl --reference: full is KL 0 from itself, window:32 departs")
PY
exit $fail
