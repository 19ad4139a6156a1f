#!/usr/bin/env bash
# Regenerates the Gemma 3 270M tables of docs/results-gemma.md with `spillway ppl`: the
# StreamingLLM comparisons on a model whose local layers were trained with a 512-token
# window and no sinks, and the question that poses for its global layers.
#
#   scripts/make-results-gemma.sh              run everything (about 40 minutes on 2 cores)
#   RESUME=1 scripts/make-results-gemma.sh     keep runs whose raw JSON already exists
#   SKIP_RUNS=1 scripts/make-results-gemma.sh  only rebuild the tables from raw JSON
#   ONLY='g-sinks|g-local' ...                 only these runs, no tables
#
# Environment: SPILLWAY (default build/bin/spillway), THREADS (default 2), RAW (per-token
# outputs, default build/results-gemma-raw; not committed), MODEL (default the Gemma file
# of scripts/setup.sh --model gemma3-270m).
# Writes docs/results/gemma/: commands.txt, summary.json, tables.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SPILLWAY=${SPILLWAY:-build/bin/spillway}
THREADS=${THREADS:-2}
RAW=${RAW:-build/results-gemma-raw}
MODEL=${MODEL:-models/gemma-3-270m-q4_k_m.gguf}
OUT=docs/results/gemma
AUSTEN=data/austen.txt

kStream=3072     # every stream: the first kStream tokens of the corpus
kScoreFrom=1024  # tables score targets kScoreFrom..kStream-1 (past every cache but one)
kRecFrom=2816    # the paired comparison with recompute: targets kRecFrom..kStream-1

if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  [[ -x $SPILLWAY ]] || { echo "make-results-gemma.sh: no binary at $SPILLWAY" >&2; exit 1; }
  for f in "$MODEL" "$AUSTEN"; do
    [[ -f $f ]] || { echo "make-results-gemma.sh: missing $f (scripts/setup.sh --model gemma3-270m)" >&2; exit 1; }
  done
fi
mkdir -p "$RAW" "$OUT"

declare -a kCommands=()
run() {
  local name=$1
  shift
  local -a cmd=("$SPILLWAY" ppl -m "$MODEL" -t "$THREADS" -f "$AUSTEN" --max-tokens "$kStream" "$@"
    --json "$RAW/$name.json")
  local shown
  shown=$(printf '%q ' spillway ppl -m "$MODEL" -t "$THREADS" -f "$AUSTEN" --max-tokens "$kStream" "$@")
  shown=${shown//\\,/,}
  kCommands+=("$name: ${shown% }")
  if [[ ${SKIP_RUNS:-0} == 1 ]]; then return; fi
  if [[ -n ${ONLY:-} && ! $name =~ ^(${ONLY})$ ]]; then return; fi
  if [[ ${RESUME:-0} == 1 && -s $RAW/$name.json ]]; then
    echo "== $name: kept $RAW/$name.json"
    return
  fi
  echo "== $name: ${shown% }"
  local t0=$SECONDS
  "${cmd[@]}" >/dev/null
  echo "== $name: $((SECONDS - t0)) s"
}

# Policies past the cache. The policy governs the global layers (every sixth); the local
# layers keep their native 512-token window (local=native, the default).
run g-policies -p full -p window:256 -p sink:4+252 -p window:1024 -p sink:4+1020
# Number of sinks at a global cache of 256 (S=0 is window:256, S=4 sink:4+252 above).
run g-sinks -p sink:1+255 -p sink:2+254 -p sink:8+248 -p sink:16+240
# Cache sizes.
run g-sizes -p window:64 -p sink:4+60 -p window:128 -p sink:4+124 -p window:512 -p sink:4+508
# Every layer under the policy (local=policy): the local layers lose their own window.
run g-local -p window:256,local=policy -p sink:4+252,local=policy \
  -p window:1024,local=policy -p sink:4+1020,local=policy
# The recompute oracle, paired with the streaming policies token by token.
run g-recompute --score-from $kRecFrom -p recompute:256 -p sink:4+252 -p window:256

if [[ -n ${ONLY:-} ]]; then
  echo "make-results-gemma.sh: ran only '$ONLY'; run without ONLY (RESUME=1) for the tables"
  exit 0
fi
printf '%s\n' "${kCommands[@]}" >"$OUT/commands.txt"

export RAW OUT kStream kScoreFrom kRecFrom
python3 - <<'PY'
import json, math, os, statistics

raw, out = os.environ["RAW"], os.environ["OUT"]
kStream, kScoreFrom, kRecFrom = (int(os.environ[k]) for k in ("kStream", "kScoreFrom", "kRecFrom"))

series = {}
for name in ("g-policies", "g-sinks", "g-sizes", "g-local", "g-recompute"):
    with open(os.path.join(raw, name + ".json")) as f:
        data = json.load(f)
    for p in data["policies"]:
        series[(name, p["spec"])] = p


def nll(run, spec, lo, hi):
    p = series[(run, spec)]
    first = p["first_target"]
    return p["nll"][lo - first : hi - first]


def ppl(run, spec, lo=kScoreFrom, hi=kStream):
    xs = nll(run, spec, lo, hi)
    return math.exp(sum(xs) / len(xs))


lines = []
emit = lines.append
summary = {}


def table(title, header, rows):
    emit(f"### {title}\n")
    emit("| " + " | ".join(header) + " |")
    emit("|" + "---|" * len(header))
    for r in rows:
        emit("| " + " | ".join(r) + " |")
    emit("")


full = ppl("g-policies", "full")
rows = []
for spec in ("full", "window:256", "sink:4+252", "window:1024", "sink:4+1020"):
    v = ppl("g-policies", spec)
    p = series[("g-policies", spec)]
    summary[spec] = v
    rows.append([f"`{spec}`", f"{v:.3f}", f"{100 * (v / full - 1):+.1f} %",
                 f"{p['kv_bytes_peak'] / 2**20:.1f}"])
table(f"Policies past the cache, targets {kScoreFrom:,}..{kStream - 1:,}",
      ["policy", "ppl", "vs full", "KV MiB (peak)"], rows)

rows = []
for s, spec, run in ((0, "window:256", "g-policies"), (1, "sink:1+255", "g-sinks"),
                     (2, "sink:2+254", "g-sinks"), (4, "sink:4+252", "g-policies"),
                     (8, "sink:8+248", "g-sinks"), (16, "sink:16+240", "g-sinks")):
    v = ppl(run, spec)
    summary[spec] = v
    rows.append([str(s), f"`{spec}`", f"{v:.3f}"])
table(f"Number of sinks at a global cache of 256, targets {kScoreFrom:,}..{kStream - 1:,}",
      ["sinks", "policy", "ppl"], rows)

rows = []
for w in (64, 128, 256, 512, 1024):
    wrun = "g-sizes" if w in (64, 128, 512) else "g-policies"
    win, snk = ppl(wrun, f"window:{w}"), ppl(wrun, f"sink:4+{w - 4}")
    summary[f"window:{w}"], summary[f"sink:4+{w - 4}"] = win, snk
    rows.append([str(w), f"{win:.3f}", f"{snk:.3f}", f"{100 * (win / snk - 1):+.1f} %"])
table(f"Global cache size, local layers native, targets {kScoreFrom:,}..{kStream - 1:,}",
      ["cache", "window:W", "sink:4+(W-4)", "window vs sink"], rows)

rows = []
for w in (256, 1024):
    nat_w, nat_s = ppl("g-policies", f"window:{w}"), ppl("g-policies", f"sink:4+{w - 4}")
    pol_w = ppl("g-local", f"window:{w},local=policy")
    pol_s = ppl("g-local", f"sink:4+{w - 4},local=policy")
    summary[f"window:{w},local=policy"], summary[f"sink:4+{w - 4},local=policy"] = pol_w, pol_s
    rows.append([str(w), f"{nat_w:.3f}", f"{nat_s:.3f}", f"{pol_w:.3f}", f"{pol_s:.3f}"])
table(f"Local layers native vs under the policy, targets {kScoreFrom:,}..{kStream - 1:,}",
      ["cache", "window, local native", "sink, local native", "window, local=policy",
       "sink, local=policy"], rows)

rec = nll("g-recompute", "recompute:256", kRecFrom, kStream)
rows = []
for spec in ("recompute:256", "sink:4+252", "window:256"):
    xs = nll("g-recompute", spec, kRecFrom, kStream)
    d = [a - b for a, b in zip(xs, rec)]
    m = sum(d) / len(d)
    se = statistics.stdev(d) / math.sqrt(len(d)) if spec != "recompute:256" else 0.0
    v = math.exp(sum(xs) / len(xs))
    summary[f"paired {spec}"] = {"ppl": v, "mean_nll_diff": m, "se": se}
    rows.append([f"`{spec}`", f"{v:.3f}", "—" if spec == "recompute:256" else
                 f"{m:+.4f} ± {1.96 * se:.4f}", f"{series[('g-recompute', spec)]['tokens_per_s']:.1f}"])
table(f"Paired with the recompute oracle, targets {kRecFrom:,}..{kStream - 1:,} "
      f"({kStream - kRecFrom} tokens)",
      ["policy", "ppl", "mean NLL − recompute (95 % CI)", "tokens/s"], rows)

with open(os.path.join(out, "tables.md"), "w") as f:
    f.write("\n".join(lines))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print("\n".join(lines))
PY
