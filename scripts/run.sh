#!/usr/bin/env bash
# The main job on a fresh machine: set-up, Release build, then the default model.
#
#   scripts/run.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
JOBS=${JOBS:-2}

scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$JOBS"
build/bin/spillway inspect models/SmolLM2-135M-Instruct.Q4_1.gguf
