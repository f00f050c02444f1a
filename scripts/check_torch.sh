#!/usr/bin/env bash
# Build and test this commit against another torch than the pinned one, in a clone of its own:
#
#   bash scripts/check_torch.sh 2.11.0 3.6.0        # the GPU machine's torch and triton (CUDA build)
#   CUDA=OFF bash scripts/check_torch.sh 2.6.0 3.2.0  # the oldest torch the library asks for, CPU-only
#   bash scripts/check_torch.sh 2.11.0 3.6.0 tests/ops   # extra arguments go to pytest
#   PYTHON=/path/to/python3.12 bash scripts/check_torch.sh 2.11.0 3.6.0   # the GPU machine's python too
#
# The clone and its venv (about 6 GiB) live in build/torch-<version>[-<python>]/; a second run reuses the venv.
# fbgemm-gpu-cpu and TorchRec are left out: their wheels are built for the pinned torch and do not
# load on another (their tests skip). numpy stays below 2.3 for triton < 3.8, whose interpreter
# (the CPU tests of the Triton kernels) converts 1-element arrays to int, an error from numpy 2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 TORCH_VERSION TRITON_VERSION [pytest args...]" >&2; exit 2; }
TORCH=$1 TRITON=$2
shift 2
PYTHON=${PYTHON:-python3}
DIR=build/torch-$TORCH$([ "$PYTHON" = python3 ] || echo "-$(basename "$PYTHON")")
rm -rf "$DIR/src"
git clone -q . "$DIR/src"
if [ ! -x "$DIR/venv/bin/python" ]; then
  "$PYTHON" -m venv "$DIR/venv"
  sed "s/^torch==.*/torch==$TORCH/; s/^triton==.*/triton==$TRITON/; s/^numpy==.*/numpy<2.3/" requirements-dev.txt \
    > "$DIR/requirements.txt"
  "$DIR/venv/bin/python" -m pip install -q -r "$DIR/requirements.txt"
  "$DIR/venv/bin/python" -m pip install -q -r requirements-peers.txt
  grep -v -e '^fbgemm-gpu-cpu' -e '^torchrec' requirements-anchors.txt > "$DIR/anchors.txt"
  "$DIR/venv/bin/python" -m pip install -q --no-deps -r "$DIR/anchors.txt"
fi
PY=$(cd "$DIR/venv/bin" && pwd)/python
cd "$DIR/src"
RANKOPS_WITH_CUDA=${CUDA:-AUTO} MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace > build.log 2>&1 \
  || { tail -40 build.log; echo "check_torch: rankops._C does not build against torch $TORCH ($DIR/src/build.log)"; exit 1; }
"$PY" -c "import torch, triton, rankops; print('torch', torch.__version__, 'triton', triton.__version__); rankops.info()"
exec "$PY" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=300 -rfE "$@"
