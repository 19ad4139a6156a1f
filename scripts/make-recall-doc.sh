#!/usr/bin/env bash
# Regenerates the tables of docs/recall.md with `spillway recall`: copy recall and pass-key
# accuracy by distance for every cache policy at two cache sizes, on SmolLM2 and Gemma 3,
# each policy's effective context and the KV bytes it took.
#
#   scripts/make-recall-doc.sh                 run everything (see docs/recall.md for times)
#   RESUME=1 scripts/make-recall-doc.sh        keep runs whose raw JSON already exists
#   SKIP_RUNS=1 scripts/make-recall-doc.sh     only rebuild the tables from raw JSON
#   ONLY='smol-copy' scripts/make-recall-doc.sh  only the runs whose name matches (a regex)
#   MODELS='smol' scripts/make-recall-doc.sh   only these models (smol, gemma)
#   GEMMA_ALL=1 scripts/make-recall-doc.sh     Gemma 3 with every policy that reads attention
#                                              at both sizes (by default only h2o and tova at
#                                              1,024: they decode one token per pass)
#
# Environment: SPILLWAY (default build/bin/spillway), THREADS (default 2), RAW (default
# build/recall-raw; not committed). The fitted null sinks are made first with `spillway
# sinks --fit-null` on a calibration stream that ends before the filler the probes use.
# Writes docs/recall/: commands.txt, summary.json, tables.md, one plot per (model, probe).
set -euo pipefail
cd "$(dirname "$0")/.."

SPILLWAY=${SPILLWAY:-build/bin/spillway}
THREADS=${THREADS:-2}
RAW=${RAW:-build/recall-raw}
MODELS=${MODELS:-smol gemma}
OUT=docs/recall
TEXT=data/austen.txt

declare -A kModel=([smol]=models/SmolLM2-135M-Instruct.Q4_1.gguf
  [gemma]=models/gemma-3-270m-q4_k_m.gguf)
kDistances=64,128,256,512,1024,2048
kSizes=(256 1024)
kCalibTokens=4096  # the fit's calibration stream: the text's first tokens
kSeeds=4           # probes per distance
# The probes' filler starts this many bytes into the text, well past the calibration
# stream's (about 18 KB), so no probe sits in text the fit saw.
kFillerSkipBytes=65536

if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  [[ -x $SPILLWAY ]] || { echo "make-recall-doc.sh: no binary at $SPILLWAY" >&2; exit 1; }
  for m in $MODELS; do
    [[ -f ${kModel[$m]} ]] || {
      echo "make-recall-doc.sh: missing ${kModel[$m]} (scripts/setup.sh --model gemma3-270m)" >&2
      exit 1
    }
  done
fi
mkdir -p "$RAW" "$OUT"

declare -a kCommands=()
# run NAME ARGS...: one spillway invocation whose JSON lands in $RAW/NAME.json.
run() {
  local name=$1
  shift
  local shown
  shown=$(printf '%q ' spillway "$@")
  shown=${shown//\\,/,}
  kCommands+=("$name: ${shown% }")
  [[ ${SKIP_RUNS:-0} == 1 ]] && return
  [[ -n ${ONLY:-} && ! $name =~ $ONLY ]] && return
  if [[ ${RESUME:-0} == 1 && -s $RAW/$name.json ]]; then
    echo "== $name: kept"
    return
  fi
  echo "== $name: ${shown% }"
  local t0=$SECONDS
  if ! "$SPILLWAY" "$@" >"$RAW/$name.txt"; then
    echo "== $name: FAILED (exit status $?; its output is in $RAW/$name.txt)" >&2
    rm -f "$RAW/$name.json"
    return
  fi
  echo "== $name: $((SECONDS - t0)) s"
  echo "$((SECONDS - t0))" >"$RAW/$name.seconds"
}

# The filler: the text after the calibration stream's characters.
FILLER=$RAW/filler.txt
if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  tail -c +$((kFillerSkipBytes + 1)) "$TEXT" >"$FILLER"
fi

for m in $MODELS; do
  model=${kModel[$m]}
  for c in "${kSizes[@]}"; do
    fit=$RAW/$m-nullsink-$c.fit
    run "$m-fit-$c" sinks -m "$model" -t "$THREADS" -f "$TEXT" --tokens "$kCalibTokens" \
      --fit-null "$fit" --policy "sink:4+$((c - 4))" --json "$RAW/$m-fit-$c.json"
  done
  for probe in copy passkey; do
    common=(recall -m "$model" -t "$THREADS" -f "$FILLER" --probe "$probe"
      --seeds "$kSeeds")
    run "$m-$probe-full" "${common[@]}" -p full --distances "$kDistances,4096" \
      --json "$RAW/$m-$probe-full.json"
    for c in "${kSizes[@]}"; do
      s=$((c - 4))
      fit=$RAW/$m-nullsink-$c.fit
      policies=(-p "window:$c" -p "sink:4+$s")
      if [[ $m == smol || ${GEMMA_ALL:-0} == 1 ]]; then
        policies+=(-p "detected:4+$s" -p "h2o:$((c / 4))+$((c - c / 4))" -p "tova:$c"
          -p "nullsink:$c")
      elif [[ $c == "${kSizes[1]}" ]]; then  # Gemma 3: the two scattered caches, once
        policies+=(-p "h2o:$((c / 4))+$((c - c / 4))" -p "tova:$c")
      fi
      run "$m-$probe-$c" "${common[@]}" --distances "$kDistances" "${policies[@]}" \
        --json "$RAW/$m-$probe-$c.json"
      run "$m-$probe-fitted-$c" "${common[@]}" --distances "$kDistances" \
        -p "nullsink:$c,fit=$fit" --json "$RAW/$m-$probe-fitted-$c.json"
      # The oracle re-encodes its window for every scored token: two distances, one
      # inside the window, one past it (on Gemma 3 at the smaller cache only, unless
      # GEMMA_ALL=1: a scored token there costs a 1,024-token prefill of a 270M model).
      if [[ $m == smol || $c == "${kSizes[0]}" || ${GEMMA_ALL:-0} == 1 ]]; then
        run "$m-$probe-recompute-$c" "${common[@]}" --distances "$((c / 2)),$((c * 2))" \
          -p "recompute:$c" --json "$RAW/$m-$probe-recompute-$c.json"
      fi
    done
  done
done
# Divergence from the full cache, run in lockstep (ppl --reference full): 1,024 tokens
# scored once every policy's cache is full.
for m in $MODELS; do
  model=${kModel[$m]}
  for c in "${kSizes[@]}"; do
    s=$((c - 4))
    policies=(-p "window:$c" -p "sink:4+$s" -p "nullsink:$c,fit=$RAW/$m-nullsink-$c.fit")
    if [[ $m == smol || ${GEMMA_ALL:-0} == 1 ]]; then
      policies+=(-p "detected:4+$s" -p "h2o:$((c / 4))+$((c - c / 4))" -p "tova:$c"
        -p "nullsink:$c")
    fi
    run "$m-kl-$c" ppl -m "$model" -t "$THREADS" -f "$FILLER" --max-tokens $((c + 1024)) \
      --score-from "$c" --reference full "${policies[@]}" --json "$RAW/$m-kl-$c.json"
  done
done
printf '%s\n' "${kCommands[@]}" >"$OUT/commands.txt"

[[ -n ${ONLY:-} ]] && exit 0
export RAW OUT MODELS
python3 - <<'PY'
import glob, json, math, os, re, subprocess, sys

raw, out = os.environ["RAW"], os.environ["OUT"]
models = {"smol": "SmolLM2-135M-Instruct (Q4_1)", "gemma": "Gemma 3 270M (Q4_K_M)"}
sizes = [256, 1024]


def load(name):
    path = os.path.join(raw, name + ".json")
    if not os.path.exists(path):
        print(f"make-recall-doc.sh: no run {name}, left out of the tables")
        return None
    with open(path) as f:
        return json.load(f)


def seconds(name):
    path = os.path.join(raw, name + ".seconds")
    return int(open(path).read()) if os.path.exists(path) else None


def short(spec):  # the fit file's path is long: name it by what it is
    return re.sub(r",fit=[^,]*", ",fit", spec)


summary, lines = {}, []
for m in os.environ["MODELS"].split():
    for probe in ["copy", "passkey"]:
        rows, took = [], 0
        for name in [f"{m}-{probe}-full"] + [f"{m}-{probe}-{c}" for c in sizes] + \
                [f"{m}-{probe}-fitted-{c}" for c in sizes] + \
                [f"{m}-{probe}-recompute-{c}" for c in sizes]:
            d = load(name)
            if d:
                rows += d["rows"]
                took += seconds(name) or 0
        if not rows:
            continue
        measure = "recall" if probe == "copy" else "accuracy"
        distances = sorted({r["distance"] for r in rows})
        specs = []
        for r in rows:
            if r["spec"] not in specs:
                specs.append(r["spec"])
        cell = {(r["spec"], r["distance"]): r for r in rows}
        lines.append(f"### {models[m]}: {probe} probe ({measure})\n")
        head = "| policy | " + " | ".join(str(d) for d in distances) + \
            " | effective context | KV bytes (largest probe) |"
        lines += [head, "|---|" + "---:|" * (len(distances) + 2)]
        per = {}
        for spec in specs:
            mine = sorted((r for r in rows if r["spec"] == spec), key=lambda r: r["distance"])
            eff = None  # the distance from which on the measure stays below 0.5
            for r in mine:
                if r[measure] is None or r[measure] >= 0.5:
                    eff = None
                elif eff is None:
                    eff = r["distance"]
            kv = max(r["kv_bytes_peak"] for r in mine)
            vals = []
            for d in distances:
                r = cell.get((spec, d))
                if r is None or r[measure] is None:
                    vals.append("")
                elif probe == "copy":
                    vals.append(f"{r[measure]:.2f}")
                else:
                    vals.append(f"{round(100 * r[measure])} %")
            far = max(r["distance"] for r in mine)
            eff_s = f"{eff}" if eff is not None else f"> {far}"
            lines.append(f"| `{short(spec)}` | " + " | ".join(vals) +
                         f" | {eff_s} | {kv / 2**20:.1f} MiB |")
            per[short(spec)] = {"effective_context": eff, "kv_bytes_peak": kv,
                                measure: {str(r["distance"]): r[measure] for r in mine}}
        lines.append(f"\n{len(rows)} cells, {rows[0]['n']} probes each; the runs took {took} s "
                     "in all.\n")
        summary[f"{m}-{probe}"] = per
        for c in sizes:
            plot_rows = [r for r in rows if r.get("capacity") in (None, c)]
            tmp = os.path.join(raw, f"{m}-{probe}-{c}-plot.json")
            with open(tmp, "w") as f:
                json.dump({"probe": probe, "rows": [dict(r, spec=short(r["spec"]))
                                                    for r in plot_rows]}, f)
            subprocess.run([sys.executable, "scripts/plot-recall.py", tmp,
                            os.path.join(out, f"{m}-{probe}-{c}.png"), "--title",
                            f"{models[m]}, {probe} probe, cache {c}"], check=True)

for m in os.environ["MODELS"].split():
    for c in sizes:
        d = load(f"{m}-kl-{c}")
        if not d:
            continue
        lines.append(f"### {models[m]}: divergence from the full cache, cache {c}\n")
        lines += ["| policy | ppl | ratio to full | KL(full ‖ policy), nats | top-1 agreement |",
                  "|---|---:|---:|---:|---:|"]
        for p in d["policies"]:
            ref = p.get("reference_mean_nll")
            ratio = math.exp(p["mean_nll"] - ref) if ref is not None else float("nan")
            lines.append(f"| `{short(p['spec'])}` | {p['ppl']:.3f} | {ratio:.3f} | "
                         f"{p['kl_mean']:.3f} | {100 * p['top1_agree']:.1f} % |")
            summary.setdefault(f"{m}-kl-{c}", {})[short(p["spec"])] = {
                "ppl": p["ppl"], "kl_mean": p["kl_mean"], "top1_agree": p["top1_agree"]}
        lines.append(f"\n{d['policies'][0].get('tokens', '?')} tokens scored, from token {c}; "
                     f"the run took {seconds(f'{m}-kl-{c}')} s.\n")

# One line per policy: its effective context on both probes and the KV bytes it held.
for m in os.environ["MODELS"].split():
    copy, key = summary.get(f"{m}-copy", {}), summary.get(f"{m}-passkey", {})
    if not copy and not key:
        continue
    lines.append(f"### {models[m]}: effective context (where recall or accuracy stays below 0.5) and KV "
                 "bytes\n")
    lines += ["| policy | copy | passkey | KV bytes |", "|---|---:|---:|---:|"]

    def eff(cell):
        if cell is None:
            return ""
        if cell["effective_context"] is not None:
            return str(cell["effective_context"])
        return "> " + str(max(int(d) for d in next(v for k, v in cell.items()
                                                   if k in ("recall", "accuracy"))))

    for spec in list(dict.fromkeys(list(copy) + list(key))):
        c, k = copy.get(spec), key.get(spec)
        kv = max(x["kv_bytes_peak"] for x in (c, k) if x is not None)
        lines.append(f"| `{spec}` | {eff(c)} | {eff(k)} | {kv / 2**20:.1f} MiB |")
    lines.append("")

with open(os.path.join(out, "tables.md"), "w") as f:
    f.write("\n".join(lines))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"wrote {out}/tables.md, summary.json and the plots")
PY
