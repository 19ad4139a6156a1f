#!/usr/bin/env bash
# Regenerates every number and plot of docs/sinks.md (attention sinks measured with
# `spillway sinks` on SmolLM2-135M and Gemma 3 270M), and prints the tables.
#
#   scripts/make-sinks-doc.sh             run everything (about 15 minutes on one core)
#   RESUME=1 scripts/make-sinks-doc.sh    keep runs whose raw JSON already exists
#   SKIP_RUNS=1 scripts/make-sinks-doc.sh only rebuild the summaries from the raw JSON
#   ONLY='smol-ablate|gemma-.*' scripts/make-sinks-doc.sh  only these runs, no tables
#
# Environment: SPILLWAY (binary, default build/bin/spillway), THREADS (default 1), RAW
# (full JSON and printed output of each run, default build/sinks-raw; not committed).
# Writes docs/sinks/: commands.txt, summary.json (every number the page quotes, with
# its command), runs/NAME.json (each run's statistics, rounded, without the per-token
# arrays), tables.md, and the plots the page shows in docs/sinks/NAME/.
set -euo pipefail
cd "$(dirname "$0")/.."

SPILLWAY=${SPILLWAY:-build/bin/spillway}
THREADS=${THREADS:-1}
RAW=${RAW:-build/sinks-raw}
OUT=docs/sinks
SMOL=models/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=models/gemma-3-270m-q4_k_m.gguf
AUSTEN=data/austen.txt
# The plots come from this checkout's script, not the one the binary was built with.
export SPILLWAY_PLOT_SINKS_SCRIPT=${SPILLWAY_PLOT_SINKS_SCRIPT:-scripts/plot-sinks.py}

if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  [[ -x $SPILLWAY ]] || { echo "make-sinks-doc.sh: no binary at $SPILLWAY (build spillway_cli or set SPILLWAY)" >&2; exit 1; }
  for f in "$SMOL" "$GEMMA" "$AUSTEN"; do
    [[ -f $f ]] || { echo "make-sinks-doc.sh: missing $f (run scripts/setup.sh)" >&2; exit 1; }
  done
fi
mkdir -p "$RAW" "$OUT/runs"

# run NAME [plot] ARGS...: one `spillway sinks` run on Austen writing $RAW/NAME.json and
# its printed report $RAW/NAME.txt; with `plot` its PNGs go to $OUT/NAME/. The command,
# as shown on the page, goes to $OUT/commands.txt.
declare -a kCommands=()
run() {
  local name=$1
  shift
  local -a plot=()
  if [[ $1 == plot ]]; then
    plot=(--plot "$OUT/$name")
    shift
  fi
  local -a cmd=("$SPILLWAY" sinks -t "$THREADS" -f "$AUSTEN" "$@" --json "$RAW/$name.json" "${plot[@]}")
  local shown
  shown=$(printf '%q ' spillway sinks -t "$THREADS" -f "$AUSTEN" "$@" "${plot[@]}")
  shown=${shown//\\,/,}
  shown=${shown//\\:/:}
  kCommands+=("$name: ${shown% }")
  if [[ ${SKIP_RUNS:-0} == 1 ]]; then return; fi
  if [[ -n ${ONLY:-} && ! $name =~ ^(${ONLY})$ ]]; then return; fi
  if [[ ${RESUME:-0} == 1 && -s $RAW/$name.json ]]; then
    echo "== $name: kept $RAW/$name.json"
    return
  fi
  echo "== $name: ${shown% }"
  local t0=$SECONDS
  "${cmd[@]}" >"$RAW/$name.txt"
  echo "== $name: $((SECONDS - t0)) s"
  echo "$((SECONDS - t0))" >"$RAW/$name.seconds"
}

G=(-m "$GEMMA")

# 1. Sink rate and where the mass goes: Gu et al.'s first 64 tokens, and longer streams.
run smol-64 plot -n 64
run smol-512 plot -n 512
run gemma-64 plot "${G[@]}" -n 64
run gemma-512 "${G[@]}" -n 512
run gemma-1024 plot "${G[@]}" -n 1024

# 2. Causal dependence: every head's sink slots removed from its softmax, one at a time.
run smol-ablate plot --ablate -p sink:4+252 --score-tokens 256
run smol-ablate-60 --ablate --layers-only -p sink:4+60 --score-tokens 256
# Gemma's local layers keep their native 512-token window (no sink slots) under the
# default local=native; the global layers (5, 11, 17) are ablated there. With
# local=policy every layer runs sink:4+508 (its window, plus four sinks), so the local
# heads have sink slots to lose.
run gemma-ablate-global "${G[@]}" --ablate -p sink:4+252 --score-tokens 256 \
  --layer 5 --layer 11 --layer 17 \
  --head 5:0 --head 5:1 --head 5:2 --head 5:3 --head 11:0 --head 11:1 --head 11:2 --head 11:3 \
  --head 17:0 --head 17:1 --head 17:2 --head 17:3
run gemma-ablate-policy plot "${G[@]}" --ablate -p sink:4+508,local=policy --score-tokens 256
# Layer 18 of SmolLM2 on another stretch of the text (from token 2000): each of its
# heads alone, and the whole layer, to check that the largest single-head effects are
# not an accident of one passage.
run smol-ablate-18-skip2000 --ablate -p sink:4+252 --score-tokens 256 --skip-tokens 2000 \
  --layer 18 --head 18:0 --head 18:1 --head 18:2 --head 18:3 --head 18:4 --head 18:5 \
  --head 18:6 --head 18:7 --head 18:8 --head 19:8

# 3(a) Role vs location: the stream starting elsewhere, and prepended tokens.
for s in 3 33 46 58 1000 2170; do
  run smol-skip-$s -n 64 --skip-tokens $s
  run gemma-skip-$s "${G[@]}" -n 64 --skip-tokens $s
done
# Prefixes: one newline token; sixteen newlines (four "\n\n\n\n" tokens); punctuation;
# one word; a repeated word; random ordinary tokens.
declare -A kPrefix=(
  [nl1]=$'\n'
  [nl16]=$'\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n'
  [dot]='.'
  [punct]='. , ; : ! ? - .'
  [the1]='the'
  [the8]='the the the the the the the the'
)
for p in nl1 nl16 dot punct the1 the8; do
  run smol-prefix-$p -n 64 --prefix "${kPrefix[$p]}"
  run gemma-prefix-$p "${G[@]}" -n 64 --prefix "${kPrefix[$p]}"
done
for r in 1 4 8; do
  run smol-random-$r -n 64 --prefix-random $r
  run gemma-random-$r "${G[@]}" -n 64 --prefix-random $r
done
# The secondary sink of SmolLM2 (the lone space after "CHAPTER", stream index 25) at
# other places: the stream from token 10 (it sits at 15), from token 2170 ("CHAPTER 2"
# at 24..27), and a longer stream from token 1800 ("CHAPTER 2" at 394..397).
run smol-skip-10 -n 64 --skip-tokens 10
run smol-skip-1800 -n 512 --skip-tokens 1800

# 3(b) After the first tokens are evicted: window:64 over 256 tokens (queries 64..255
# lack them), with RoPE positions inside the cache (StreamingLLM) or the stream's; the
# same at window:256 over 1024 tokens. The -n 64 / -n 256 runs are the same streams cut
# before the first eviction: subtracting them leaves the evicted queries alone.
for w in 64 256; do
  n=$((w * 4))
  run smol-window$w-$w -n $w -p window:$w
  run smol-window$w-$n -n $n -p window:$w
  run smol-window$w-abs-$w -n $w -p window:$w,positions=absolute
  run smol-window$w-abs-$n -n $n -p window:$w,positions=absolute
done
run smol-window64-plot plot -n 256 -p window:64
# The same queries with every token kept, for comparison.
run smol-full-256 -n 256
run smol-full-1024 -n 1024
run gemma-full-256 "${G[@]}" -n 256
run gemma-window64-64 "${G[@]}" -n 64 -p window:64
run gemma-window64-256 "${G[@]}" -n 256 -p window:64
run gemma-window64-policy-64 "${G[@]}" -n 64 -p window:64,local=policy
run gemma-window64-policy-256 "${G[@]}" -n 256 -p window:64,local=policy
# 3(c) sink:S+W with S = 0 (window:64 above), 1, 4; the same 256 tokens.
for s in 1 4; do
  run smol-sink$s-64 -n 64 -p sink:$s+$((64 - s))
  run smol-sink$s-256 -n 256 -p sink:$s+$((64 - s))
done
# 3(d) BOS: Gemma adds one, SmolLM2 does not (and `sinks` cannot add one to it).
run gemma-nobos-64 "${G[@]}" -n 64 --no-bos
run gemma-nobos-512 "${G[@]}" -n 512 --no-bos
run gemma-nobos-skip-46 "${G[@]}" -n 64 --no-bos --skip-tokens 46

if [[ -n ${ONLY:-} ]]; then
  echo "make-sinks-doc.sh: ran only '$ONLY'; run without ONLY (RESUME=1 or SKIP_RUNS=1) for the tables"
  exit 0
fi
printf '%s\n' "${kCommands[@]}" >"$OUT/commands.txt"
# The page shows these plots; the others that --plot draws are removed.
kKeepPlots=" smol-64/alpha1.png smol-512/hidden.png smol-512/mass.png gemma-64/alpha1.png
  gemma-1024/mass.png gemma-1024/hidden.png smol-ablate/ablation.png
  gemma-ablate-policy/ablation.png smol-window64-plot/mass.png "
for f in "$OUT"/*/*.png; do
  rel=${f#"$OUT"/}
  [[ $kKeepPlots == *[[:space:]]"$rel"[[:space:]]* ]] || rm -f "$f"
done
RAW=$RAW OUT=$OUT python3 scripts/sinks-summary.py
