#!/usr/bin/env bash
# The main job on built-in data: a short training demo on synthetic data with planted structure,
# then the benchmarks (results under bench/results/). Extra arguments go to the benchmark runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m rankops.demo
exec .venv/bin/python -m bench interaction "$@"
