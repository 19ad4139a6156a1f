#!/usr/bin/env bash
# End-to-end serving speed of `spillway serve` against llama.cpp's llama-server on the same
# GGUF file and thread count: for each client count N, each server runs with N requests
# decoding together (spillway --max-active N; llama-server --parallel N, continuous
# batching, a 1,024-token context per slot like spillway's sink:4+1020 cache), both with
# f16 KV, and bench/serve-load.py sends N streaming clients, each --requests chat requests
# of --max-tokens tokens one after another (ignore_eos, so every request decodes them
# all). Reported per N and server: aggregate generated tokens/s, time to first token and
# inter-token latency percentiles; medians over --rounds rounds, the two servers taking
# turns (which goes first alternates), and the ratio spillway / llama.cpp (above 1:
# spillway is faster). Loopback only; every server start and load run is bounded by
# --timeout seconds, and the servers are stopped at the end whatever happens.
#
#   bench/compare-serve.sh [--model M] [--threads N] [--clients 1,8,16] [--rounds R]
#                          [--requests K] [--max-tokens T] [--port P] [--timeout S]
#                          [--spillway BIN] [--llama-server BIN] [--json OUT]
#
# llama-server comes from scripts/build-llama-cpp.sh --server (cached; several minutes the
# first time) unless --llama-server or $LLAMA_SERVER names an existing binary.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
threads=$(nproc)
clients=1,8,16
rounds=2
requests=3
max_tokens=128
port=18431
timeout_s=600
spillway=$ROOT/build/bin/spillway
llama_server=${LLAMA_SERVER:-}
json_out=

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}
die() {
  printf 'compare-serve: error: %s\n' "$*" >&2
  exit 1
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --model | -m) model=$2; shift 2 ;;
    --threads | -t) threads=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --spillway) spillway=$2; shift 2 ;;
    --llama-server) llama_server=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
for v in threads rounds requests max_tokens port timeout_s; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "compare-serve: ${v//_/-} must be a positive integer" >&2; exit 2; }
done
[[ $clients =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] ||
  { echo "compare-serve: --clients must be a comma-separated list of positive integers" >&2; exit 2; }
((port < 65000)) || { echo "compare-serve: --port must be below 65000" >&2; exit 2; }
[[ -f $model ]] || die "model '$model' not found (run scripts/setup.sh)"
[[ -x $spillway ]] || die "'$spillway' not found: build first (cmake --build build -j2), or pass --spillway"
if [[ -z $llama_server ]]; then
  out=$("$ROOT/scripts/build-llama-cpp.sh" --server) || die "scripts/build-llama-cpp.sh --server failed"
  llama_server=$(printf '%s\n' "$out" | sed -n 's/^tool: *\(.*\/llama-server\)$/\1/p' | head -n 1)
fi
[[ -x $llama_server ]] || die "llama-server '$llama_server' is not an executable file"

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  commit="$commit+local changes"
fi
echo "machine:      $cpu; $(nproc) cpus; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model:        $model"
echo "threads:      $threads; clients $clients; $rounds rounds of $requests requests x $max_tokens tokens per client"
echo "spillway:     $spillway (commit $commit)"
echo "llama-server: $llama_server"
echo

tmp=$(mktemp -d)
server_pid=
stop_server() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=
}
trap 'stop_server; rm -rf "$tmp"' EXIT

# start_server NAME N LOG: the server NAME with N requests decoding together, on the next
# port from --port on (a port just closed may still be held by its old connections).
starts=0
start_server() {
  local name=$1 n=$2 log=$3
  url=http://127.0.0.1:$((port + starts))
  local p=$((port + starts))
  starts=$((starts + 1))
  if [[ $name == spillway ]]; then
    "$spillway" serve --model "$model" --threads "$threads" --host 127.0.0.1 --port "$p" \
      --policy sink:4+1020,kv=f16 --max-active "$n" --max-sessions "$((n + 8))" --no-web \
      --max-connections "$((2 * n + 8))" >"$log" 2>&1 &
  else
    "$llama_server" --model "$model" --threads "$threads" --host 127.0.0.1 --port "$p" \
      --parallel "$n" --ctx-size "$((1024 * n))" --cont-batching >"$log" 2>&1 &
  fi
  server_pid=$!
  local deadline=$((SECONDS + timeout_s))
  until python3 - "$url/health" <<'EOF' 2>/dev/null; do
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
    kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "$name exited before it was ready"; }
    ((SECONDS < deadline)) || { tail -n 20 "$log" >&2; die "$name not ready after $timeout_s s"; }
    sleep 0.5
  done
}

IFS=, read -r -a counts <<<"$clients"
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order=(llama.cpp spillway); else order=(spillway llama.cpp); fi
  for n in "${counts[@]}"; do
    for name in "${order[@]}"; do
      echo "round $r/$rounds: $name, $n clients" >&2
      start_server "$name" "$n" "$tmp/$name-$n-$r.log"
      timeout "$timeout_s" python3 "$ROOT/bench/serve-load.py" "$url" \
        --clients "$n" --requests "$requests" --max-tokens "$max_tokens" \
        --json "$tmp/$name-$n-$r.json" >/dev/null 2>"$tmp/$name-$n-$r.err" ||
        { tail -n 20 "$tmp/$name-$n-$r.err" >&2; die "the load run against $name ($n clients) failed"; }
      stop_server
    done
  done
done

python3 - "$tmp" "$rounds" "$clients" "$json_out" "$cpu" "$threads" "$commit" "$max_tokens" <<'EOF'
import json, statistics, sys
tmp, rounds, clients, json_out, cpu, threads, commit, max_tokens = sys.argv[1:9]
rounds, counts = int(rounds), [int(c) for c in clients.split(',')]
keys = ['tokens_per_s', 'ttft_p50_s', 'ttft_p90_s', 'itl_p50_ms', 'itl_p90_ms', 'itl_p99_ms']
med = lambda xs: statistics.median(xs) if xs else float('nan')
rows = []
for n in counts:
    row = {'clients': n}
    for name in ('llama.cpp', 'spillway'):
        runs = [json.load(open(f'{tmp}/{name}-{n}-{r}.json')) for r in range(1, rounds + 1)]
        failed = sum(x['failed'] for x in runs)
        if failed:
            sys.exit(f'compare-serve: {failed} requests to {name} failed with {n} clients')
        row[name] = {k: med([x[k] for x in runs]) for k in keys}
        row[name]['rounds'] = [x['tokens_per_s'] for x in runs]
    row['ratio'] = row['spillway']['tokens_per_s'] / row['llama.cpp']['tokens_per_s']
    rows.append(row)
print(f"{'clients':>7} {'server':>10} {'tokens/s':>9} {'TTFT p50 s':>10} {'p90 s':>7} "
      f"{'ITL p50 ms':>10} {'p90 ms':>7} {'p99 ms':>7}")
for row in rows:
    for name in ('llama.cpp', 'spillway'):
        m = row[name]
        print(f"{row['clients']:>7} {name:>10} {m['tokens_per_s']:>9.1f} {m['ttft_p50_s']:>10.3f} "
              f"{m['ttft_p90_s']:>7.3f} {m['itl_p50_ms']:>10.2f} {m['itl_p90_ms']:>7.2f} "
              f"{m['itl_p99_ms']:>7.2f}")
    print(f"{row['clients']:>7} {'ratio':>10} {row['ratio']:>9.2f}x  (spillway / llama.cpp tokens/s)")
print(f"(medians over {rounds} rounds; {max_tokens} tokens per request; threads {threads}; "
      f"commit {commit})")
if json_out:
    with open(json_out, 'w') as f:
        json.dump({'machine': cpu, 'threads': int(threads), 'commit': commit,
                   'max_tokens': int(max_tokens), 'rounds': rounds, 'results': rows}, f, indent=1)
EOF
