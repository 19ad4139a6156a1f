#!/usr/bin/env bash
# Regenerates the policy ranking of docs/results.md ("Policies that read attention"):
# every policy at equal cache size on the default model, each paired token by token with
# the recompute oracle of the same size over a few hundred scored tokens.
#
#   scripts/make-results-policies.sh             run everything (about an hour on 2 cores)
#   RESUME=1 scripts/make-results-policies.sh    keep runs whose raw JSON already exists
#   SKIP_RUNS=1 scripts/make-results-policies.sh only rebuild the table from raw JSON
#
# Environment: SPILLWAY (default build/bin/spillway), THREADS (default 2), RAW (default
# build/results-policies-raw; not committed), MODEL (default the default model).
# Writes docs/results/policies/: commands.txt, summary.json, table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SPILLWAY=${SPILLWAY:-build/bin/spillway}
THREADS=${THREADS:-2}
RAW=${RAW:-build/results-policies-raw}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=docs/results/policies

kStream=1280     # stream tokens
kScoreFrom=896   # scored targets kScoreFrom..kStream-1 (384 tokens, past every cache)

scripts/make-other-texts.sh
mkdir -p "$RAW" "$OUT"
declare -a kCommands=()
run() {
  local name=$1 text=$2
  shift 2
  local -a args=(ppl -m "$MODEL" -t "$THREADS" -f "$text" --max-tokens "$kStream"
    --score-from "$kScoreFrom" "$@")
  local shown
  shown=$(printf '%q ' spillway "${args[@]}")
  shown=${shown//\\,/,}
  kCommands+=("$name: ${shown% }")
  if [[ ${SKIP_RUNS:-0} == 1 ]]; then return; fi
  if [[ ${RESUME:-0} == 1 && -s $RAW/$name.json ]]; then
    echo "== $name: kept"
    return
  fi
  echo "== $name: ${shown% }"
  local t0=$SECONDS
  "$SPILLWAY" "${args[@]}" --json "$RAW/$name.json" >/dev/null
  echo "== $name: $((SECONDS - t0)) s"
}

policies() {  # policies at cache size $1
  local c=$1
  echo "-p window:$c -p sink:4+$((c - 4)) -p detected:4+$((c - 4)) -p nullsink:$c" \
    "-p h2o:$((c / 4))+$((c - c / 4)) -p tova:$c -p recompute:$c"
}
declare -A kTexts=([austen]=data/austen.txt [licenses]=data/other-licenses.txt
  [python]=data/other-python.txt)
for c in 256 512; do
  # shellcheck disable=SC2046
  run "austen-$c" data/austen.txt $(policies $c)
done
for t in licenses python; do
  # shellcheck disable=SC2046
  run "$t-256" "${kTexts[$t]}" $(policies 256)
done
printf '%s\n' "${kCommands[@]}" >"$OUT/commands.txt"

export RAW OUT
python3 - <<'PY'
import json, math, os, statistics

raw, out = os.environ["RAW"], os.environ["OUT"]
runs = [("austen", 256), ("austen", 512), ("licenses", 256), ("python", 256)]
lines = ["| text | cache | policy | ppl | ratio to recompute (95 % CI) | tokens/s | peak KV |",
         "|---|---:|---|---:|---|---:|---:|"]
summary = []
for text, c in runs:
    path = os.path.join(raw, f"{text}-{c}.json")
    if not os.path.exists(path):
        print(f"make-results-policies.sh: no run {text}-{c}, left out of the table")
        continue
    with open(path) as f:
        data = json.load(f)
    pols = {p["spec"]: p for p in data["policies"]}
    rec = pols[f"recompute:{c}"]["nll"]
    rows = []
    for spec, p in pols.items():
        d = [a - b for a, b in zip(p["nll"], rec)]
        m = sum(d) / len(d)
        se = statistics.stdev(d) / math.sqrt(len(d)) if any(d) else 0.0
        rows.append((p["ppl"], spec, p, m, se))
    rows.sort()
    for ppl, spec, p, m, se in rows:
        ci = "—" if spec.startswith("recompute") else \
            f"{math.exp(m):.3f} ({math.exp(m - 1.96 * se):.3f}..{math.exp(m + 1.96 * se):.3f})"
        lines.append(f"| {text} | {c} | `{spec}` | {ppl:.3f} | {ci} | {p['tokens_per_s']:.1f} | "
                     f"{p['kv_bytes_peak'] / 2**20:.1f} MiB |")
        summary.append({"text": text, "cache": c, "spec": spec, "ppl": ppl,
                        "mean_nll_diff_vs_recompute": m, "se": se, "tokens": len(p["nll"]),
                        "tokens_per_s": p["tokens_per_s"], "kv_bytes_peak": p["kv_bytes_peak"]})
with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print("\n".join(lines))
PY
