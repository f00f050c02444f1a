#!/usr/bin/env bash
# The GPU suite, in stages, for a machine with a CUDA GPU (e.g. the lent H200): rebuild the
# extension for that machine's python/torch, run the GPU tests, benchmark the cases the issues set
# GPU targets on. Uses the machine's own python3 (no venv, no downloads).
#
#   bash scripts/gpu_suite.sh                       # every stage in order (inside 12 minutes)
#   bash scripts/gpu_suite.sh --stage build-test    # one stage (each inside 8 minutes)
#   bash scripts/gpu_suite.sh --stage bench --stage bench-more
#
# Stages, most important first (`--list` prints them with their budgets):
#   build-test   build rankops._C (sm_90), rankops.info(), every gpu-marked test
#   bench        CUDA vs Triton (and eager / compile) on the ops with GPU targets: interaction,
#                embedding_bag, attention, cross
#   bench-more   cin, DIN (Triton forward + backward vs eager and compile)
# bench and bench-more end with auto_order.json in their archive: rankops/auto_order.json updated with
# the CUDA-vs-Triton winner per op they measured (`python -m bench.auto_order`); commit it to adopt it.
#   bench-models python -m bench models    (added by the models work; skipped until registered)
#   bench-patch  python -m bench patch     (added by the patch work; skipped until registered)
# A stage that finds no extension built for this python builds it first (inside its budget).
#
# Each stage has a budget (STAGE_LIMIT seconds, default its own below) and every command in it a
# limit, cut to what the budget has left, so a hanging command costs its limit and the stage still
# ends in time. Each stage packs what it wrote into one archive, $OUT/gpu-<stage>.tar.gz (OUT
# defaults to bench/results), whatever happened. FULL=1 makes `bench` run `python -m bench all`
# on the whole grids instead (an hour or more; not for the lent machine).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

ALL_STAGES=(build-test bench bench-more bench-models bench-patch)
# budgets add up to 720 s: the whole suite, build included, inside 12 minutes
declare -A BUDGET=([build-test]=280 [bench]=220 [bench-more]=90 [bench-models]=110 [bench-patch]=20)

stages=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stages+=("$2"); shift 2 ;;
    --stage=*) stages+=("${1#--stage=}"); shift ;;
    --list) for s in "${ALL_STAGES[@]}"; do echo "$s ${BUDGET[$s]}s"; done; exit 0 ;;
    *) echo "usage: $0 [--stage NAME]... [--list]   (stages: ${ALL_STAGES[*]})" >&2; exit 2 ;;
  esac
done
[ ${#stages[@]} -gt 0 ] || stages=("${ALL_STAGES[@]}")
for s in "${stages[@]}"; do
  [ -n "${BUDGET[$s]:-}" ] || { echo "unknown stage $s (stages: ${ALL_STAGES[*]})" >&2; exit 2; }
done

DIR=""          # the running stage's results, packed into $OUT/gpu-<stage>.tar.gz at its end
STAGE_END=0     # SECONDS at which the running stage's budget is spent
rc_all=0

limited() {  # limited <seconds> <cmd...>: cmd under min(seconds, what the stage has left - 5)
  local want=$1 left=$(( STAGE_END - SECONDS - 5 )); shift
  [ "$left" -lt "$want" ] && want=$left
  if [ "$want" -lt 10 ]; then echo "skipped (stage budget spent): $*" | tee -a "$DIR/skipped.txt"; return 124; fi
  timeout "$want" "$@"
}

ensure_built() {
  if $PY -c "import rankops._C" 2>/dev/null && [ -f build/.gpu_suite_built ]; then return 0; fi
  rm -rf build rankops/_C*.so
  RANKOPS_CUDA_ARCHS=${RANKOPS_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} \
    limited 200 $PY setup.py -q build_ext --inplace > "$DIR/build.log" 2>&1 || { tail -40 "$DIR/build.log"; return 1; }
  touch build/.gpu_suite_built
}

bench() {  # bench <seconds> <name> [args...]: one benchmark under its own limit
  local limit=$1; shift
  limited "$limit" $PY -m bench "$@" --device cuda --out "$DIR" --min-time 0.1 2>&1 | tee -a "$DIR/bench.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "bench $1: rc=$rc" | tee -a "$DIR/bench.txt"; return "$rc"; }
}

registered() {  # whether `python -m bench <name>` exists (bench/<name>.py, found by name)
  [ -f "bench/$1.py" ]
}

stage_build-test() {
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$DIR/gpu.txt"
  rm -f build/.gpu_suite_built  # this stage always rebuilds: the checkout may be another machine's build
  ensure_built || return 1
  $PY -c "import rankops; rankops.info()" | tee -a "$DIR/gpu.txt"
  # every gpu-marked test, without stopping at the first failure (a first GPU run wants them all),
  # in what the stage has left after the build
  limited 270 $PY -m pytest -q -m gpu -p no:cacheprovider --maxfail=30 --durations=15 tests 2>&1 | tee "$DIR/gpu_tests.txt"
  return "${PIPESTATUS[0]}"
}

stage_bench() {
  ensure_built || return 1
  local rc=0
  if [ "${FULL:-0}" = 1 ]; then bench 3600 all || rc=$?; return $rc; fi
  # the cases the issues' GPU targets name, most important first; each row has cuda and triton
  bench 55 interaction --cases B=65536 F=39 || rc=$?                    # FM >= 80%, dot >= 70% of copy bandwidth
  bench 65 embedding_bag --cases R=1000000 B=16384 D=64,128 || rc=$?    # fwd >= 80%, bwd+update >= 40%
  bench 55 attention --cases L=1000,10000 Q=1,64 || rc=$?               # Q=1 >= 80% of bandwidth, >= 1.5x SDPA
  bench 55 cross --cases B=65536 --dtype fp32 bf16 || rc=$?             # 3 layers N=432 within 1.3x of memory
  auto_order
  return $rc
}

auto_order() {  # the per-op CUDA-vs-Triton winners of this stage's csvs, as the table auto reads
  cp rankops/auto_order.json "$DIR/auto_order.json"
  $PY -m bench.auto_order "$DIR"/*.csv --out "$DIR/auto_order.json" 2>&1 | tee -a "$DIR/bench.txt"
}

stage_bench-more() {
  ensure_built || return 1
  local rc=0
  bench 40 cin --dtype bf16 || rc=$?                                    # >= 50% of the bf16 tensor-core rate
  bench 40 attention --cases op=din_attention --dtype fp32 bf16 || rc=$?  # Triton DIN vs eager / compile
  auto_order
  return $rc
}

# ---- stages that other work adds: fill in the command and its cases here ---------------------
stage_bench-models() {
  registered models || { echo "python -m bench models is not registered yet: stage skipped" | tee "$DIR/skipped.txt"; return 0; }
  ensure_built || return 1
  # issue 10's GPU target (>= 2x eager, >= 1.3x compile of the reference, samples/s): three models,
  # the fused default (auto: cuda, else triton, per op) beside eager and compile; each case compiles twice
  bench 100 models --cases model=dcnv2,deepfm,din
}

stage_bench-patch() {
  registered patch || { echo "python -m bench patch is not registered yet: stage skipped" | tee "$DIR/skipped.txt"; return 0; }
  ensure_built || return 1
  # the peer libraries are pure Python but not on the GPU machine unless carried there
  $PY -c "import deepctr_torch" 2>/dev/null || { echo "deepctr-torch is not installed here: stage skipped" | tee "$DIR/skipped.txt"; return 0; }
  bench 18 patch
}
# ------------------------------------------------------------------------------------------------

for s in "${stages[@]}"; do
  DIR=$(mktemp -d)
  budget=${STAGE_LIMIT:-${BUDGET[$s]}}
  STAGE_END=$(( SECONDS + budget ))
  t0=$SECONDS
  echo "== stage $s (budget ${budget}s)"
  "stage_$s"
  rc=$?
  echo "stage $s: rc=$rc in $(( SECONDS - t0 ))s (budget ${budget}s)" | tee "$DIR/stage.txt"
  git rev-parse --short HEAD > "$DIR/commit.txt" 2>/dev/null || true
  tar czf "$OUT/gpu-$s.tar.gz" -C "$DIR" . && rm -rf "$DIR"
  echo "   -> $OUT/gpu-$s.tar.gz"
  [ "$rc" -eq 0 ] || rc_all=$rc
done
exit $rc_all
