#!/usr/bin/env bash
# Make (or refresh) the local environment: .venv with the pinned dev requirements, and the
# native extension built in place. Idempotent: a second run only re-checks and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# Re-install only when the pinned requirements changed since the last successful install.
stamp=.venv/.rankops-requirements
want=$(cat requirements-dev.txt requirements-anchors.txt requirements-peers.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch's CUDA build and its NVIDIA wheels unpack to about 6 GiB, and pip stages them in TMPDIR first:
  # say so plainly rather than fail deep inside pip with ENOSPC.
  need_kib=$((8 * 1024 * 1024))
  for dir in .venv "${TMPDIR:-/tmp}"; do
    free_kib=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
    if [ "$free_kib" -lt "$need_kib" ]; then
      echo "[bootstrap] only $((free_kib / 1024 / 1024)) GiB free under $dir; installing the pinned environment needs about 8 GiB" >&2
      echo "[bootstrap] (old clones or build trees in $dir? 'du -sh $dir/*' finds them)" >&2
      exit 1
    fi
  done
  echo "[bootstrap] installing requirements-dev.txt (torch's CUDA build is several GB; about a minute from a local mirror)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  # Anchors and peer libraries (fbgemm-gpu-cpu, torchrec, deepctr-torch, torch-rechub, ...) without their
  # dependency resolution (it would replace torch); what they import besides torch is resolved normally
  # from requirements-peers.txt (none of it pulls torch: checked with pip install --dry-run).
  if ! .venv/bin/python -m pip install -q -r requirements-peers.txt \
     || ! .venv/bin/python -m pip install -q --no-deps -r requirements-anchors.txt; then
    echo "[bootstrap] warning: anchors / peer libraries not installed; their benchmark columns will be absent"
    echo "[bootstrap] and tests/patch will skip them"
  fi
  echo "$want" > "$stamp"
fi

# The native extension (CMake + ninja; incremental).
echo "[bootstrap] building rankops._C"
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python setup.py -q build_ext --inplace > .venv/build.log 2>&1 || {
  tail -50 .venv/build.log
  echo "[bootstrap] native build failed (full log: .venv/build.log)"
  exit 1
}
.venv/bin/python -c "import rankops._C" || { echo "[bootstrap] rankops._C does not import"; exit 1; }
