#!/usr/bin/env bash
# spillway soak: usage errors exit 2 before any model is loaded; on the real model (when
# present) a short stream over a small repeated text writes one CSV row and one JSON line
# per checkpoint and a summary with a verdict, with flat KV bytes and no non-finite logits.
# Usage: soak.sh SPILLWAY_BINARY SOURCE_DIR
set -u
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

expect_usage_error soak "bad policy" --model "$TMP/none.gguf" --policy 'sink:4+'
expect_usage_error soak "growing cache" --model "$TMP/none.gguf" --policy full
grep -q 'bounded' "$TMP/err.txt" || die "growing cache: message does not say why"
expect_usage_error soak "one token" --model "$TMP/none.gguf" --tokens 1
expect_usage_error soak "zero interval" --model "$TMP/none.gguf" --every 0
expect_usage_error soak "negative warm-up" --model "$TMP/none.gguf" --warmup -1

"$BIN" soak --model "$TMP/none.gguf" >/dev/null 2>"$TMP/err.txt"
rc=$?
[ "$rc" -eq 1 ] || die "missing model: exit status $rc, expected 1"
grep -q "none.gguf" "$TMP/err.txt" || die "missing model: message does not name the file"

model=$SRC/models/SmolLM2-135M-Instruct.Q4_1.gguf
require_model "$model"

# About 40 tokens of text, so the 300-token stream repeats it several times.
printf 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.\n' >"$TMP/text.txt"
"$BIN" soak --model "$model" --text "$TMP/text.txt" --policy sink:4+60 --tokens 300 --every 100 \
  --warmup 100 -t 1 --csv "$TMP/soak.csv" --json "$TMP/soak.jsonl" >"$TMP/out.txt" 2>"$TMP/err.txt" ||
  die "soak run failed: $(head -c 500 "$TMP/err.txt")"
grep -q 'repeated back to back' "$TMP/out.txt" || die "no stream description"
grep -q 'verdict' "$TMP/out.txt" || die "no verdict"
[ "$(wc -l <"$TMP/soak.csv")" -eq 4 ] || die "CSV: expected a header and 3 rows"
head -1 "$TMP/soak.csv" | grep -q '^tokens,seconds,tokens_per_s,latency_ms_median' || die "CSV header"
[ "$(wc -l <"$TMP/soak.jsonl")" -eq 4 ] || die "JSON lines: expected 3 checkpoints and a summary"
python3 - "$TMP/soak.csv" "$TMP/soak.jsonl" <<'PY' || die "soak output checks"
import csv, json, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [int(r["tokens"]) for r in rows] == [100, 200, 300], rows
for r in rows:
    assert int(r["nonfinite_logits"]) == 0, r
    assert int(r["kv_bytes"]) == int(rows[0]["kv_bytes"]) > 0, r
    assert int(r["rss_bytes"]) > 50e6, r
    assert float(r["latency_ms_p99"]) >= float(r["latency_ms_median"]) > 0, r
    assert 0 < float(r["nll_running"]) < 20 and math.isfinite(float(r["nll_interval"])), r
lines = [json.loads(l) for l in open(sys.argv[2])]
s = lines[-1]
assert s["summary"] is True and s["tokens"] == 300 and s["nonfinite_logits"] == 0, s
assert s["baseline_tokens"] == 200 and s["kv_ok"] is True, s
assert s["verdict"] in ("pass", "fail") and s["policy"] == "sink:4+60", s
# The latency criterion is one-sided: only an end more than 5 % slower than the baseline fails.
assert s["latency_ratio"] == s["latency_ms_median_end"] / s["latency_ms_median_baseline"], s
assert s["latency_ok"] == (s["latency_ratio"] <= 1.05), s
assert s["verdict"] == ("pass" if s["latency_ok"] and s["rss_ok"] and s["kv_ok"] else "fail"), s
# The repeated text is learned in context: NLL falls well below that of the first pass.
assert float(rows[-1]["nll_interval"]) < float(rows[0]["nll_interval"]), rows
PY
echo "soak ok"
