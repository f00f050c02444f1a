#!/usr/bin/env bash
# The whole GPU suite in one command, for a machine with a CUDA GPU (e.g. the lent H200):
# rebuild the extension for that machine's python/torch, run the GPU tests, run every benchmark.
# Uses the machine's own python3 (no venv, no downloads). Results go to $OUT (or bench/results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
rm -rf build rankops/_C*.so
RANKOPS_CUDA_ARCHS=${RANKOPS_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} \
  $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import rankops; rankops.info()" | tee -a "$OUT/gpu.txt"
$PY -m pytest -q -m gpu -p no:cacheprovider -x tests 2>&1 | tee "$OUT/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}
$PY -m bench all --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.txt"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
