#!/usr/bin/env bash
# spillway bench: usage errors exit 2 before any model is loaded; on the real model (when
# present) a small run prints a table and JSON with every field, with plausible values.
# Usage: bench.sh SPILLWAY_BINARY SOURCE_DIR
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
  "$bin" bench "$@" >/dev/null 2>"$tmp/err.txt"
  rc=$?
  [ "$rc" -eq 2 ] || fail "$what: exit status $rc, expected 2 ($(head -c 300 "$tmp/err.txt"))"
  grep -q '^error: ' "$tmp/err.txt" || fail "$what: no 'error:' line"
}

# Usage errors, checked before the model loads (the model path does not even exist).
expect_usage_error "bad policy" --model "$tmp/none.gguf" --policy 'sink:4+'
grep -q 'sink' "$tmp/err.txt" || fail "bad policy: message does not name the policy"
expect_usage_error "unknown policy" --model "$tmp/none.gguf" --policy nosuch:3
expect_usage_error "zero reps" --model "$tmp/none.gguf" --reps 0
expect_usage_error "zero prompt" --model "$tmp/none.gguf" --prompt 0
expect_usage_error "unknown flag" --frobnicate

# A missing model is a runtime error (exit 1).
"$bin" bench --model "$tmp/none.gguf" >/dev/null 2>"$tmp/err.txt"
rc=$?
[ "$rc" -eq 1 ] || fail "missing model: exit status $rc, expected 1"
grep -q "none.gguf" "$tmp/err.txt" || fail "missing model: message does not name the file"

model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  echo "note: $model absent; the runs on the real model are skipped"
  echo "bench.sh: ok"
  exit 0
fi
small=(--model "$model" --text "$src/data/austen.txt" --reps 1 --prompt 32 --gen 8 --threads 2)

# The table; --stream 0 skips the deep-stream decode.
"$bin" bench "${small[@]}" --stream 0 >"$tmp/table.txt" 2>"$tmp/err.txt" ||
  fail "bench (table): $(cat "$tmp/err.txt")"
for pat in '^kernels ' 'prefill pp32' 'decode tg8' 'peak RSS' 'weights read per token'; do
  grep -q "$pat" "$tmp/table.txt" || fail "table: no line matching '$pat'"
done
if grep -q 'tg8 @' "$tmp/table.txt"; then fail "--stream 0 still ran the stream test"; fi

"$bin" bench "${small[@]}" --stream 160 --stream-batch 32 --policy window:64 --json >"$tmp/out.json" 2>"$tmp/err.txt" ||
  fail "bench --json: $(cat "$tmp/err.txt")"
python3 - "$tmp/out.json" <<'EOF' || fail "bench JSON"
import json, sys
j = json.load(open(sys.argv[1]))
for k in ['model', 'kernel_isa', 'threads', 'reps', 'tokens_from', 'weight_bytes_per_token',
          'prefill', 'decode', 'stream', 'peak_rss_bytes', 'load_seconds']:
    assert k in j, k
assert j['threads'] == 2 and j['reps'] == 1, j
assert j['kernel_isa'] in ('scalar', 'avx2', 'avx512-vnni'), j['kernel_isa']
assert 'austen' in j['tokens_from'], j['tokens_from']
for part in ['prefill', 'decode', 'stream']:
    p = j[part]
    assert p['tokens_per_s'] > 0 and len(p['tokens_per_s_reps']) == 1, (part, p)
    assert p['kv_bytes'] > 0, (part, p)
for part in ['decode', 'stream']:
    p = j[part]
    assert 0 < p['latency_ms_median'] <= p['latency_ms_p99'] <= p['latency_ms_max'], (part, p)
assert j['prefill']['tokens'] == 32 and j['decode']['tokens'] == 8
s = j['stream']
assert s['policy'] == 'window:64' and s['position'] == 160 and s['advance_seconds'] > 0, s
# 30 layers x 3 KV heads x 64 dims x (K + V) x f32 per slot; window:64 with batch 32 holds
# 64 + 31 ring slots; full holds the 8 decoded tokens at least.
per_slot = 30 * 3 * 64 * 2 * 4
assert s['kv_bytes'] == per_slot * (64 + 31), s['kv_bytes']
assert j['decode']['kv_bytes'] >= per_slot * 8, j['decode']['kv_bytes']
# Model weights are ~92 MiB per token; RSS holds at least the mapped weights read.
assert 80e6 < j['weight_bytes_per_token'] < 110e6, j['weight_bytes_per_token']
assert j['peak_rss_bytes'] > j['weight_bytes_per_token'], j['peak_rss_bytes']
assert abs(j['decode']['weight_bytes_per_s'] -
           j['decode']['tokens_per_s'] * j['weight_bytes_per_token']) < 1e-3 * j['decode']['weight_bytes_per_s']
EOF

echo "bench.sh: ok"
