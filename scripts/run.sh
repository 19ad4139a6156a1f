#!/usr/bin/env bash
# The main job on a fresh machine: set-up, Release build, then the streaming perplexity
# comparison of the KV-cache policies on the default model and corpus (a short version
# of docs/results.md's table (a); a few minutes on 2 cores).
#
#   scripts/run.sh            # TOKENS=4096 RECOMPUTE_TOKENS=256 by default
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
JOBS=${JOBS:-2}
TOKENS=${TOKENS:-4096}
RECOMPUTE_TOKENS=${RECOMPUTE_TOKENS:-256}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
TEXT=data/austen.txt

scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
# Only what the job runs (the library and the tool); scripts/test.sh builds the rest.
cmake --build build -j "$JOBS" --target spillway_cli

mkdir -p out
echo
echo "== Streaming perplexity, first $TOKENS tokens of $TEXT (past the 1,024-token caches)"
build/bin/spillway ppl --model "$MODEL" --file "$TEXT" --max-tokens "$TOKENS" \
  --policy full --policy window:1024 --policy sink:4+1020 \
  --json out/ppl.json --plot out/ppl.png
echo
echo "== The same policies and recompute:1024 (the oracle, ~1,024 tokens of work per token)"
echo "   scored on the last $RECOMPUTE_TOKENS tokens of that stream, each policy paired with the"
echo "   oracle token by token (a few hundred tokens resolve a few per cent; 32 could not)"
build/bin/spillway ppl --model "$MODEL" --file "$TEXT" --max-tokens "$TOKENS" \
  --score-from $((TOKENS - RECOMPUTE_TOKENS)) \
  --policy recompute:1024 --policy sink:4+1020 --policy window:1024 --policy full \
  --json out/ppl-recompute.json
echo
echo "Per-token NLL and the plot: out/ppl.json, out/ppl.png.csv, out/ppl.png"
