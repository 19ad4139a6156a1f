#!/usr/bin/env bash
# Side-by-side speed of spillway and llama.cpp on the same GGUF file and thread count:
# prompt processing of 512 tokens (pp512), decoding 128 tokens one at a time from an
# empty cache (tg128) and with a full cache at each depth D (tg128 @ dD: llama-bench -d D,
# its cache holding D tokens before the first decoded one; spillway bench --depths D,
# sink:4+(D-4) filled to D tokens, each decoded token evicting one; both f16 KV unless
# --kv says otherwise for spillway). The two run alternately, several rounds, so that a
# slow moment of the machine hits both; per round llama-bench reports its mean over
# --reps repetitions and spillway bench its median; the table shows the median over
# rounds and the ratio spillway / llama.cpp (above 1: spillway is faster), and spillway's
# memory bound per decode test (bytes a token reads / read bandwidth of a buffer that
# size, measured by spillway bench with the same threads) with the fraction reached.
#
#   bench/compare-llama-cpp.sh [--model M] [--threads N] [--rounds R] [--reps K]
#                              [--depths D1,D2] [--kv f16|f32|q8_0]
#                              [--spillway BIN] [--llama-bench BIN] [--json OUT]
#
# llama-bench comes from scripts/build-llama-cpp.sh (cached; 10+ minutes the first time)
# unless --llama-bench or $LLAMA_BENCH names an existing binary, e.g.
#   LLAMA_BENCH=/tmp/lcpp-build/bin/llama-bench bench/compare-llama-cpp.sh
# spillway runs with --stream 0 here (its 16K-position test has no llama-bench twin);
# --depths 0 leaves the depth tests out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
threads=$(nproc)
rounds=3
reps=3
depths=1024,4096
kv=f16
spillway=$ROOT/build/bin/spillway
llama_bench=${LLAMA_BENCH:-}
json_out=

usage() {
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
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
    --depths) depths=$2; shift 2 ;;
    --kv) kv=$2; shift 2 ;;
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
[[ $depths =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "compare-llama-cpp: --depths must be a comma-separated list of integers" >&2; exit 2; }
[[ $kv =~ ^(f32|f16|q8_0)$ ]] || { echo "compare-llama-cpp: --kv must be f32, f16 or q8_0" >&2; exit 2; }
llama_depths=$(printf '%s' "$depths" | tr ',' '\n' | awk '$1 > 0' | paste -sd, -)
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
echo "depths:    ${llama_depths:-none} (spillway KV $kv, llama.cpp KV f16)"
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
  if [[ -n $llama_depths ]]; then
    echo "round $r/$rounds: llama-bench -d $llama_depths" >&2
    "$llama_bench" -m "$model" -p 0 -n 128 -d "$llama_depths" -t "$threads" -r "$reps" -o json \
      >"$tmp/llama-d-$r.json" 2>"$tmp/llama-d-$r.err" ||
      { tail -n 20 "$tmp/llama-d-$r.err" >&2; die "llama-bench -d failed in round $r"; }
  else
    echo '[]' >"$tmp/llama-d-$r.json"
  fi
  echo "round $r/$rounds: spillway bench" >&2
  "$spillway" bench --model "$model" --threads "$threads" --reps "$reps" --prompt 512 --gen 128 \
    --stream 0 --depths "${llama_depths:-0}" --kv "$kv" --text "$ROOT/data/austen.txt" --json \
    >"$tmp/spillway-$r.json" 2>"$tmp/spillway-$r.err" ||
    { tail -n 20 "$tmp/spillway-$r.err" >&2; die "spillway bench failed in round $r"; }
done

python3 - "$tmp" "$rounds" "$json_out" "$cpu" "${have[*]}" "$threads" "$commit" "$llama_depths" <<'EOF'
import json, statistics, sys
tmp, rounds, json_out, cpu, flags, threads, commit, depths = sys.argv[1:9]
rounds = int(rounds)
depths = [int(d) for d in depths.split(',') if d]
tests = ['pp512', 'tg128'] + [f'tg128@d{d}' for d in depths]
res = {t: {'llama.cpp': [], 'spillway': [], 'bound': [], 'fraction': []} for t in tests}
isa = None
for r in range(1, rounds + 1):
    for t in json.load(open(f'{tmp}/llama-{r}.json')) + json.load(open(f'{tmp}/llama-d-{r}.json')):
        d = t.get('n_depth', 0)
        if t['n_prompt'] == 512 and t['n_gen'] == 0 and d == 0:
            res['pp512']['llama.cpp'].append(t['avg_ts'])
        elif t['n_prompt'] == 0 and t['n_gen'] == 128:
            name = 'tg128' if d == 0 else f'tg128@d{d}'
            if name in res:
                res[name]['llama.cpp'].append(t['avg_ts'])
    s = json.load(open(f'{tmp}/spillway-{r}.json'))
    isa = s['kernel_isa']
    res['pp512']['spillway'].append(s['prefill']['tokens_per_s'])
    res['tg128']['spillway'].append(s['decode']['tokens_per_s'])
    res['tg128']['bound'].append(s['decode']['bound']['bound_tokens_per_s'])
    res['tg128']['fraction'].append(s['decode']['bound']['fraction_of_bound'])
    for t in s.get('depth', []):
        name = f"tg128@d{t['depth']}"
        res[name]['spillway'].append(t['tokens_per_s'])
        res[name]['bound'].append(t['bound']['bound_tokens_per_s'])
        res[name]['fraction'].append(t['bound']['fraction_of_bound'])
print(f"{'test':<12} {'llama.cpp t/s':>14} {'spillway t/s':>13} {'ratio':>7} {'bound t/s':>10} {'reached':>8}   per round (llama.cpp | spillway)")
summary = {'cpu': cpu, 'flags': flags.split(), 'threads': int(threads), 'rounds': rounds,
           'spillway_commit': commit, 'spillway_kernel_isa': isa, 'tests': {}}
for test, v in res.items():
    if len(v['llama.cpp']) != rounds or len(v['spillway']) != rounds:
        sys.exit(f'compare-llama-cpp: error: missing {test} results: {v}')
    l, s = statistics.median(v['llama.cpp']), statistics.median(v['spillway'])
    # The ratio of each round (the two tools ran back to back), then their median.
    ratio = statistics.median(b / a for a, b in zip(v['llama.cpp'], v['spillway']))
    rows = ' '.join(f'{x:.1f}' for x in v['llama.cpp']) + ' | ' + ' '.join(f'{x:.1f}' for x in v['spillway'])
    bound = f"{statistics.median(v['bound']):>10.1f} {100 * statistics.median(v['fraction']):>7.0f}%" if v['bound'] else f"{'-':>10} {'-':>8}"
    print(f'{test:<12} {l:>14.1f} {s:>13.1f} {ratio:>7.2f} {bound}   {rows}')
    summary['tests'][test] = {'llama_cpp_tokens_per_s': l, 'spillway_tokens_per_s': s,
                              'ratio': ratio, 'llama_cpp_rounds': v['llama.cpp'],
                              'spillway_rounds': v['spillway']}
    if v['bound']:
        summary['tests'][test]['spillway_bound_tokens_per_s'] = statistics.median(v['bound'])
        summary['tests'][test]['spillway_fraction_of_bound'] = statistics.median(v['fraction'])
print(f'(spillway kernels: {isa}; medians over {rounds} rounds; ratio = median over rounds of spillway / llama.cpp;')
print(f' bound: bytes a token reads / read bandwidth of a buffer that size, {threads} thread(s), per round)')
if json_out:
    with open(json_out, 'w') as f:
        json.dump(summary, f, indent=2)
        f.write('\n')
EOF
