#!/usr/bin/env bash
# Regenerates every table and plot of docs/results.md (StreamingLLM's experiments on the
# default SmolLM2-135M model). The runs are the sweep examples/sweeps/results.toml
# (spillway-sweep: resumable, only missing cells run; locally or on a Ray cluster), the
# tables and plots are rendered from its store by scripts/render-results.py.
#
#   scripts/make-results.sh                  run what the store lacks, render
#   scripts/make-results.sh --ray ADDRESS    the cells on a Ray cluster
#   SKIP_RUNS=1 scripts/make-results.sh      only render from the store
#
# Arguments go to spillway-sweep (--jobs N, --ray auto|local|ADDRESS, --retry-failed).
# Environment: PYTHON (default build-py/venv/bin/python, with `pip install '.[sweep]'`
# and matplotlib), STORE (default build/sweep-results; not committed).
# Writes docs/results/: commands.txt, summary.json, tables.md and the PNG plots.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-build-py/venv/bin/python}
STORE=${STORE:-build/sweep-results}
scripts/make-other-texts.sh
if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  "$PYTHON" -m spillway.sweep examples/sweeps/results.toml --out "$STORE" "$@"
fi
"$PYTHON" scripts/render-results.py "$STORE"
