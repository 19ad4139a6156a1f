#!/usr/bin/env bash
# spillway bench: usage errors exit 2 before any model is loaded; on the real model (when
# present) a small run prints a table and JSON with every field, with plausible values.
# Usage: bench.sh SPILLWAY_BINARY SOURCE_DIR
set -u
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Usage errors, checked before the model loads (the model path does not even exist).
expect_usage_error bench "bad policy" --model "$TMP/none.gguf" --policy 'sink:4+'
grep -q 'sink' "$TMP/err.txt" || die "bad policy: message does not name the policy"
expect_usage_error bench "unknown policy" --model "$TMP/none.gguf" --policy nosuch:3
expect_usage_error bench "zero reps" --model "$TMP/none.gguf" --reps 0
expect_usage_error bench "zero prompt" --model "$TMP/none.gguf" --prompt 0
expect_usage_error bench "unknown flag" --frobnicate
expect_usage_error bench "depth too small" --model "$TMP/none.gguf" --depths 1024,3
grep -q 'depth must be at least 5' "$TMP/err.txt" || die "depth too small: message does not say why"
expect_usage_error bench "bad KV type" --model "$TMP/none.gguf" --kv f16,q4_0
grep -q 'q4_0' "$TMP/err.txt" || die "bad KV type: message does not name it"
expect_usage_error bench "position of a growing policy" --model "$TMP/none.gguf" --positions 5000 \
  --policy h2o:4+100
grep -q 'plans by position alone' "$TMP/err.txt" || die "position, h2o: message does not say why"
expect_usage_error bench "position inside the cache" --model "$TMP/none.gguf" --positions 100
grep -q '100 is outside 1024' "$TMP/err.txt" || die "position 100: message does not say why"

# A missing model is a runtime error (exit 1).
"$BIN" bench --model "$TMP/none.gguf" >/dev/null 2>"$TMP/err.txt"
rc=$?
[ "$rc" -eq 1 ] || die "missing model: exit status $rc, expected 1"
grep -q "none.gguf" "$TMP/err.txt" || die "missing model: message does not name the file"

model=$SRC/models/SmolLM2-135M-Instruct.Q4_1.gguf
require_model "$model"
small=(--model "$model" --text "$SRC/data/austen.txt" --reps 1 --prompt 32 --gen 8 --threads 2)

# The table; --stream 0 skips the deep-stream decode, --depths 0 the full-cache ones.
"$BIN" bench "${small[@]}" --stream 0 --depths 0 >"$TMP/table.txt" 2>"$TMP/err.txt" ||
  die "bench (table): $(cat "$TMP/err.txt")"
for pat in '^kernels ' 'prefill pp32' 'decode tg8' 'peak RSS' 'weights read per token' \
  '^memory bound'; do
  grep -q "$pat" "$TMP/table.txt" || die "table: no line matching '$pat'"
done
if grep -q 'tg8 @' "$TMP/table.txt"; then die "--stream 0 or --depths 0 still ran a test"; fi

"$BIN" bench "${small[@]}" --stream 160 --stream-batch 32 --policy window:64 --depths 64,96 \
  --kv f16,q8_0 --json >"$TMP/out.json" 2>"$TMP/err.txt" ||
  die "bench --json: $(cat "$TMP/err.txt")"
python3 - "$TMP/out.json" <<'EOF' || die "bench JSON"
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
# Full-cache tests: depth x KV type, each with its memory bound. A token at depth D reads
# the weights and 30 x 3 x 2 rows of D keys/values (f16: 128 bytes a row, q8_0: 2 blocks
# of 34).
d = j['depth']
assert [(t['depth'], t['policy']) for t in d] == [
    (64, 'sink:4+60,kv=f16'), (64, 'sink:4+60,kv=q8_0'),
    (96, 'sink:4+92,kv=f16'), (96, 'sink:4+92,kv=q8_0')], d
for t in d:
    row = 128 if t['kv_type'] == 'F16' else 68
    b = t['bound']
    assert b['weight_bytes_per_token'] == j['weight_bytes_per_token'], b
    assert b['kv_bytes_read_per_token'] == 30 * 3 * 2 * row * t['depth'], (t['kv_type'], b)
    assert b['read_bandwidth_bytes_per_s'] > 1e8, b
    want = b['read_bandwidth_bytes_per_s'] / (b['weight_bytes_per_token'] + b['kv_bytes_read_per_token'])
    assert abs(b['bound_tokens_per_s'] - want) < 1e-6 * want, b
    assert t['tokens_per_s'] > 0 and len(t['tokens_per_s_reps']) == 1 and t['tokens'] == 8, t
# Each repetition's fraction pairs its tokens/s with the probe taken right after it; the
# reported fraction is their median.
import statistics
for t in d + [j['decode']]:
    b = t['bound']
    nbytes = b['weight_bytes_per_token'] + b['kv_bytes_read_per_token']
    assert len(b['read_bandwidth_bytes_per_s_reps']) == len(t['tokens_per_s_reps']), b
    want = [tps * nbytes / bw for tps, bw in zip(t['tokens_per_s_reps'], b['read_bandwidth_bytes_per_s_reps'])]
    assert all(abs(x - y) < 1e-9 * y for x, y in zip(b['fraction_of_bound_reps'], want)), b
    assert abs(b['fraction_of_bound'] - statistics.median(want)) < 1e-9, b
assert j['decode']['bound']['bound_tokens_per_s'] > 0, j['decode']['bound']
EOF

# Positions: the sinks and window computed, the stream between skipped; a row per position
# and the paired ratio of each to the first.
"$BIN" bench --model "$model" --text "$SRC/data/austen.txt" --reps 2 --prompt 32 --gen 8 --threads 2 \
  --stream 0 --depths 0 --policy sink:4+60 \
  --positions 1000,1000000000 --json >"$TMP/pos.json" 2>"$TMP/err.txt" ||
  die "bench --positions: $(cat "$TMP/err.txt")"
python3 - "$TMP/pos.json" <<'EOF' || die "bench positions JSON"
import json, statistics, sys
j = json.load(open(sys.argv[1]))
p = j['positions']
assert [t['position'] for t in p] == [1000, 1000000000], p
for t in p:
    assert t['policy'] == 'sink:4+60' and t['tokens'] == 8 and len(t['tokens_per_s_reps']) == 2, t
ratios = [b / a for a, b in zip(p[0]['tokens_per_s_reps'], p[1]['tokens_per_s_reps'])]
assert abs(p[1]['ratio_to_first'] - statistics.median(ratios)) < 1e-9, (p[1], ratios)
assert p[0]['ratio_to_first'] == 1.0, p[0]
EOF

echo "bench.sh: ok"
