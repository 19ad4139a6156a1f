#!/usr/bin/env bash
# Regenerates the Gemma 3 270M tables of docs/results-gemma.md: the StreamingLLM
# comparisons on a model whose local layers were trained with a 512-token window and no
# sinks, and the question that poses for its global layers. The runs are the sweep
# examples/sweeps/results-gemma.toml (spillway-sweep: resumable, only missing cells run;
# locally or on a Ray cluster), the tables are rendered from its store by
# scripts/render-results-gemma.py.
#
#   scripts/make-results-gemma.sh                  run what the store lacks, render
#   scripts/make-results-gemma.sh --ray ADDRESS    the cells on a Ray cluster
#   SKIP_RUNS=1 scripts/make-results-gemma.sh      only render from the store
#
# Arguments go to spillway-sweep (--jobs N, --ray auto|local|ADDRESS, --retry-failed).
# Environment: PYTHON (default build-py/venv/bin/python, with `pip install '.[sweep]'`),
# STORE (default build/sweep-results-gemma; not committed). Needs the Gemma model
# (scripts/setup.sh --model gemma3-270m).
# Writes docs/results/gemma/: commands.txt, summary.json, tables.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-build-py/venv/bin/python}
STORE=${STORE:-build/sweep-results-gemma}
if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  "$PYTHON" -m spillway.sweep examples/sweeps/results-gemma.toml --out "$STORE" "$@"
fi
"$PYTHON" scripts/render-results-gemma.py "$STORE"
