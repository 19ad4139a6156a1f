#!/usr/bin/env bash
# CLI test of `spillway ppl`. $1 = spillway binary, $2 = source directory.
# Usage and file errors are checked always; runs need the default model.
set -uo pipefail
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
printf 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. %.0s' {1..12} >"$TMP/text.txt"
: >"$TMP/empty.txt"

for spec in "sink:4" "window:0" "sink:4+8,positions=sideways" "bogus" "recompute:-1"; do
  "$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" --policy "$spec" >/dev/null 2>"$TMP/err"
  check "bad spec '$spec' exits 2" 2 $?
  check "bad spec '$spec' lists the forms" 1 "$(grep -c "^error: bad policy spec .*sink:S+W" "$TMP/err")"
done
"$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" >/dev/null 2>&1
check "no --policy exits 2" 2 $?
"$BIN" ppl --model "$MODEL" --file "$TMP/nope.txt" --policy full >/dev/null 2>"$TMP/err"
check "missing file exits 1" 1 $?
check "missing file named" 1 "$(grep -c "^error: .*nope.txt" "$TMP/err")"
"$BIN" ppl --model "$TMP/no-model.gguf" --file "$TMP/text.txt" --policy full >/dev/null 2>&1
check "missing model exits 1" 1 $?

if [[ ! -f $MODEL ]]; then
  echo "skip: model checks ($MODEL missing; run scripts/setup.sh)"
  exit $fail
fi

"$BIN" ppl --model "$MODEL" --file "$TMP/empty.txt" --policy full >/dev/null 2>"$TMP/err"
check "empty text exits 2" 2 $?
check "empty text message" 1 "$(grep -c "^error: .*empty.txt.* 0 token" "$TMP/err")"

"$BIN" ppl --model "$MODEL" --file "$TMP/text.txt" --max-tokens 160 --chunk 32 -t 2 \
  --policy full --policy window:32 --policy sink:4+28 --policy recompute:32 --score-from 120 \
  --json "$TMP/out.json" --csv "$TMP/out.csv" >"$TMP/table" 2>"$TMP/err"
check "run exits 0" 0 $?
check "table has 4 policies" 4 "$(grep -cE '^(full|window:32|sink:4\+28|recompute:32) ' "$TMP/table")"
check "paired against full" 1 "$(grep -c '^paired against full on the same 40 tokens' "$TMP/table")"
check "3 paired rows" 3 "$(grep -cE '^  (window:32|sink:4\+28|recompute:32) +[+-][0-9.]+ \([+-][0-9.]+ \.\. [+-][0-9.]+\); x' "$TMP/table")"
python3 - "$TMP/out.json" "$TMP/out.csv" <<'PY' || fail=1
import json, sys, math
j = json.load(open(sys.argv[1]))
specs = [p["spec"] for p in j["policies"]]
assert specs == ["full", "window:32", "sink:4+28", "recompute:32"], specs
for p in j["policies"]:
    for k in ("spec", "tokens", "ppl", "mean_nll", "tokens_per_s", "kv_bytes_peak"):
        assert k in p, k
    assert p["tokens"] == 40 and p["first_target"] == 120 and len(p["nll"]) == 40, p["tokens"]
    assert abs(math.exp(p["mean_nll"]) - p["ppl"]) < 1e-6 * p["ppl"]
    assert abs(sum(p["nll"]) / 40 - p["mean_nll"]) < 1e-4
# A repeated text is easy for a model that sees the repeats: full < window.
by = {p["spec"]: p for p in j["policies"]}
assert by["full"]["ppl"] < by["window:32"]["ppl"], (by["full"]["ppl"], by["window:32"]["ppl"])
# Each policy after the first paired with it token by token: the mean of the differences
# and its t interval (39 degrees of freedom: t = 2.000 + 0.042 * 21 / 30), computed here.
assert "paired_vs_first" not in j["policies"][0]
first = j["policies"][0]["nll"]
for p in j["policies"][1:]:
    d = p["paired_vs_first"]
    diffs = [b - a for a, b in zip(first, p["nll"])]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1))
    h = (2.000 + 0.042 * 21 / 30) * sd / math.sqrt(len(diffs))
    assert d["against"] == "full" and d["tokens"] == 40, d
    assert abs(d["mean_nll_difference"] - mean) < 1e-6, (d, mean)
    assert abs(d["low"] - (mean - h)) < 1e-5 and abs(d["high"] - (mean + h)) < 1e-5, (d, mean, h)
rows = open(sys.argv[2]).read().splitlines()
assert rows[0] == "token,full,window:32,sink:4+28,recompute:32", rows[0]
assert len(rows) == 41 and rows[1].startswith("120,"), (len(rows), rows[1])
print("ok   json and csv contents")
PY
exit $fail
