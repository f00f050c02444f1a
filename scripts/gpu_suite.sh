#!/usr/bin/env bash
# The whole GPU suite in one command, for a machine with a CUDA GPU (e.g. the lent H200):
# rebuild the extension for that machine's python/torch, run the GPU tests, then benchmark the
# cases each issue sets a GPU target on. Uses the machine's own python3 (no venv, no downloads).
# Results go to $OUT (or bench/results).
#
# Sized for the lent H200's budget (15 minutes of device time, start-up included): each phase has
# its own time limit, so a slow or hanging phase costs its limit and the rest still run. FULL=1
# runs `python -m bench all` on the whole grids instead of the target cases (an hour or more).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
rm -rf build rankops/_C*.so
RANKOPS_CUDA_ARCHS=${RANKOPS_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} \
  timeout 420 $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import rankops; rankops.info()" | tee -a "$OUT/gpu.txt"

# every gpu-marked test, without stopping at the first failure (a first GPU run wants them all)
timeout ${TESTS_LIMIT:-240} $PY -m pytest -q -m gpu -p no:cacheprovider --maxfail=30 tests 2>&1 | tee "$OUT/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

bench_rc=0
bench() {  # bench <name> [args...]: one benchmark under its own time limit
  timeout ${BENCH_LIMIT:-120} $PY -m bench "$@" --device cuda --out "$OUT" --min-time 0.1 2>&1 | tee -a "$OUT/bench.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "bench $1: rc=$rc" | tee -a "$OUT/bench.txt"; bench_rc=$rc; }
}
if [ "${FULL:-0}" = 1 ]; then
  bench all
else
  # the cases the issues' GPU targets name, most important first
  bench interaction --cases B=65536 F=39                      # issue 2: FM >= 80%, dot >= 70% of copy bandwidth
  bench embedding_bag --cases R=1000000 B=16384 D=64,128      # issue 3: fwd >= 80%, bwd+update >= 40%
  bench cross --cases B=65536 --dtype fp32 bf16              # issue 4: 3 layers N=432 within 1.3x of the memory limit
  bench cin --dtype bf16                                      # issue 4: >= 50% of the bf16 tensor-core rate
  bench attention --cases L=1000,10000 Q=1,64                 # issue 5: Q=1 >= 80% of bandwidth, >= 1.5x SDPA
fi
echo "gpu tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
