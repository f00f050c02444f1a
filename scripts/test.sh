#!/usr/bin/env bash
# The test command: environment, native build, GPU-readiness report (fails on a register spill),
# then the test suite. Tests that need a GPU are marked `gpu` and run in scripts/gpu_suite.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ -f scripts/gpu_report.py ]; then
  .venv/bin/python scripts/gpu_report.py
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
