#!/usr/bin/env bash
# Side-by-side speed of spillway and llama.cpp on the same GGUF file and thread count:
# prompt processing of 512 tokens (pp512) and decoding 128 tokens one at a time from an
# empty cache (tg128). The two run alternately, several rounds, so that a slow moment of
# the machine hits both; per round llama-bench reports its mean over --reps repetitions
# and spillway bench its median; the table shows the median over rounds and the ratio
# spillway / llama.cpp (above 1: spillway is faster).
#
#   bench/compare-llama-cpp.sh [--model M] [--threads N] [--rounds R] [--reps K]
#                              [--spillway BIN] [--llama-bench BIN] [--json OUT]
#
# llama-bench comes from scripts/build-llama-cpp.sh (cached; 10+ minutes the first time)
# unless --llama-bench or $LLAMA_BENCH names an existing binary, e.g.
#   LLAMA_BENCH=/tmp/lcpp-build/bin/llama-bench bench/compare-llama-cpp.sh
# spillway runs with --stream 0 here (no deep-stream test: llama-bench has none).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
threads=$(nproc)
rounds=3
reps=3
spillway=$ROOT/build/bin/spillway
llama_bench=${LLAMA_BENCH:-}
json_out=

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}
die() {
  printf 'compare-llama-cpp: error: %s\n' "$*" >&2
  exit 1
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --model | -m) model=$2; shift 2 ;;
    --threads | -t) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --spillway) spillway=$2; shift 2 ;;
    --llama-bench) llama_bench=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
for v in threads rounds reps; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "compare-llama-cpp: --$v must be a positive integer" >&2; exit 2; }
done
[[ -f $model ]] || die "model '$model' not found (run scripts/setup.sh)"
[[ -x $spillway ]] || die "'$spillway' not found: build first (cmake --build build -j2), or pass --spillway"
if [[ -z $llama_bench ]]; then
  out=$("$ROOT/scripts/build-llama-cpp.sh") || die "scripts/build-llama-cpp.sh failed"
  llama_bench=$(printf '%s\n' "$out" | sed -n 's/^tool: *\(.*\/llama-bench\)$/\1/p' | head -n 1)
fi
[[ -x $llama_bench ]] || die "llama-bench '$llama_bench' is not an executable file"

# --- the machine ----------------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
flags=$(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
have=()
for f in avx2 fma f16c avx512f avx512bw avx512_vnni avx_vnni avx512_bf16; do
  if [[ " $flags " == *" $f "* ]]; then have+=("$f"); else have+=("-$f"); fi
done
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  commit="$commit+local changes"
fi
echo "machine:   $cpu"
echo "flags:     ${have[*]}"
echo "cpus:      $(nproc) online, $(grep -c '^processor' /proc/cpuinfo) listed; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model:     $model"
echo "threads:   $threads; $rounds rounds, $reps repetitions per round and tool"
echo "spillway:  $spillway (commit $commit)"
echo "llama.cpp: $llama_bench"
echo

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for ((r = 1; r <= rounds; r++)); do
  echo "round $r/$rounds: llama-bench" >&2
  "$llama_bench" -m "$model" -p 512 -n 128 -t "$threads" -r "$reps" -o json \
    >"$tmp/llama-$r.json" 2>"$tmp/llama-$r.err" ||
    { tail -n 20 "$tmp/llama-$r.err" >&2; die "llama-bench failed in round $r"; }
  echo "round $r/$rounds: spillway bench" >&2
  "$spillway" bench --model "$model" --threads "$threads" --reps "$reps" --prompt 512 --gen 128 \
    --stream 0 --text "$ROOT/data/austen.txt" --json \
    >"$tmp/spillway-$r.json" 2>"$tmp/spillway-$r.err" ||
    { tail -n 20 "$tmp/spillway-$r.err" >&2; die "spillway bench failed in round $r"; }
done

python3 - "$tmp" "$rounds" "$json_out" "$cpu" "${have[*]}" "$threads" "$commit" <<'EOF'
import json, statistics, sys
tmp, rounds, json_out, cpu, flags, threads, commit = sys.argv[1:8]
rounds = int(rounds)
res = {'pp512': {'llama.cpp': [], 'spillway': []}, 'tg128': {'llama.cpp': [], 'spillway': []}}
isa = None
for r in range(1, rounds + 1):
    for t in json.load(open(f'{tmp}/llama-{r}.json')):
        if t['n_prompt'] == 512 and t['n_gen'] == 0:
            res['pp512']['llama.cpp'].append(t['avg_ts'])
        elif t['n_prompt'] == 0 and t['n_gen'] == 128:
            res['tg128']['llama.cpp'].append(t['avg_ts'])
    s = json.load(open(f'{tmp}/spillway-{r}.json'))
    isa = s['kernel_isa']
    res['pp512']['spillway'].append(s['prefill']['tokens_per_s'])
    res['tg128']['spillway'].append(s['decode']['tokens_per_s'])
print(f"{'test':<8} {'llama.cpp t/s':>14} {'spillway t/s':>13} {'ratio':>7}   per round (llama.cpp | spillway)")
summary = {'cpu': cpu, 'flags': flags.split(), 'threads': int(threads), 'rounds': rounds,
           'spillway_commit': commit, 'spillway_kernel_isa': isa, 'tests': {}}
for test, v in res.items():
    if len(v['llama.cpp']) != rounds or len(v['spillway']) != rounds:
        sys.exit(f'compare-llama-cpp: error: missing {test} results: {v}')
    l, s = statistics.median(v['llama.cpp']), statistics.median(v['spillway'])
    rows = ' '.join(f'{x:.1f}' for x in v['llama.cpp']) + ' | ' + ' '.join(f'{x:.1f}' for x in v['spillway'])
    print(f'{test:<8} {l:>14.1f} {s:>13.1f} {s / l:>7.2f}   {rows}')
    summary['tests'][test] = {'llama_cpp_tokens_per_s': l, 'spillway_tokens_per_s': s,
                              'ratio': s / l, 'llama_cpp_rounds': v['llama.cpp'],
                              'spillway_rounds': v['spillway']}
print(f'(spillway kernels: {isa}; medians over {rounds} rounds; ratio = spillway / llama.cpp)')
if json_out:
    with open(json_out, 'w') as f:
        json.dump(summary, f, indent=2)
        f.write('\n')
EOF
