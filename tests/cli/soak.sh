#!/usr/bin/env bash
# spillway soak: usage errors exit 2 before any model is loaded; on the real model (when
# present) a short stream over a small repeated text writes one CSV row and one JSON line
# per checkpoint and a summary with a verdict, with flat KV bytes and no non-finite logits.
# Usage: soak.sh SPILLWAY_BINARY SOURCE_DIR
set -u
bin=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

expect_usage_error() {
  local what=$1 rc
  shift
  "$bin" soak "$@" >/dev/null 2>"$tmp/err.txt"
  rc=$?
  [ "$rc" -eq 2 ] || fail "$what: exit status $rc, expected 2 ($(head -c 300 "$tmp/err.txt"))"
  grep -q '^error: ' "$tmp/err.txt" || fail "$what: no 'error:' line"
}

expect_usage_error "bad policy" --model "$tmp/none.gguf" --policy 'sink:4+'
expect_usage_error "growing cache" --model "$tmp/none.gguf" --policy full
grep -q 'bounded' "$tmp/err.txt" || fail "growing cache: message does not say why"
expect_usage_error "one token" --model "$tmp/none.gguf" --tokens 1
expect_usage_error "zero interval" --model "$tmp/none.gguf" --every 0
expect_usage_error "negative warm-up" --model "$tmp/none.gguf" --warmup -1

"$bin" soak --model "$tmp/none.gguf" >/dev/null 2>"$tmp/err.txt"
rc=$?
[ "$rc" -eq 1 ] || fail "missing model: exit status $rc, expected 1"
grep -q "none.gguf" "$tmp/err.txt" || fail "missing model: message does not name the file"

model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  [ -n "${SPILLWAY_REQUIRE_MODEL:-}" ] && fail "missing $model"
  echo "skip: no model at $model"
  exit 0
fi

# About 40 tokens of text, so the 300-token stream repeats it several times.
printf 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.\n' >"$tmp/text.txt"
"$bin" soak --model "$model" --text "$tmp/text.txt" --policy sink:4+60 --tokens 300 --every 100 \
  --warmup 100 -t 1 --csv "$tmp/soak.csv" --json "$tmp/soak.jsonl" >"$tmp/out.txt" 2>"$tmp/err.txt" ||
  fail "soak run failed: $(head -c 500 "$tmp/err.txt")"
grep -q 'repeated back to back' "$tmp/out.txt" || fail "no stream description"
grep -q 'verdict' "$tmp/out.txt" || fail "no verdict"
[ "$(wc -l <"$tmp/soak.csv")" -eq 4 ] || fail "CSV: expected a header and 3 rows"
head -1 "$tmp/soak.csv" | grep -q '^tokens,seconds,tokens_per_s,latency_ms_median' || fail "CSV header"
[ "$(wc -l <"$tmp/soak.jsonl")" -eq 4 ] || fail "JSON lines: expected 3 checkpoints and a summary"
python3 - "$tmp/soak.csv" "$tmp/soak.jsonl" <<'PY' || fail "soak output checks"
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
# The repeated text is learned in context: NLL falls well below that of the first pass.
assert float(rows[-1]["nll_interval"]) < float(rows[0]["nll_interval"]), rows
PY
echo "soak ok"
