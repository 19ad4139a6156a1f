#!/usr/bin/env bash
# Regenerates the policy ranking of docs/results.md ("Policies that read attention"):
# every policy at equal cache size on the default model, each paired token by token with
# the recompute oracle of the same size over 384 scored targets. The runs are the sweep
# examples/sweeps/results-policies.toml (spillway-sweep: resumable, only missing cells
# run; locally or on a Ray cluster), the table is rendered from its store by
# scripts/render-results-policies.py.
#
#   scripts/make-results-policies.sh                  run what the store lacks, render
#   scripts/make-results-policies.sh --ray ADDRESS    the cells on a Ray cluster
#   SKIP_RUNS=1 scripts/make-results-policies.sh      only render from the store
#
# Arguments go to spillway-sweep (--jobs N, --ray auto|local|ADDRESS, --retry-failed).
# Environment: PYTHON (default build-py/venv/bin/python, with `pip install '.[sweep]'`),
# STORE (default build/sweep-results-policies; not committed).
# Writes docs/results/policies/: commands.txt, summary.json, table.md. About 25 minutes
# on 2 cores (AMD EPYC, AVX2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-build-py/venv/bin/python}
STORE=${STORE:-build/sweep-results-policies}
scripts/make-other-texts.sh
if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  "$PYTHON" -m spillway.sweep examples/sweeps/results-policies.toml --out "$STORE" "$@"
fi
"$PYTHON" scripts/render-results-policies.py "$STORE"
