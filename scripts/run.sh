#!/usr/bin/env bash
# The main job on built-in data: zoo models trained by `rankops train` on the built-in synthetic data
# (planted third-order crosses: each run reports its AUC beside the planted model's own), the fused
# kernels' training speed against the PyTorch reference in the same job, then the benchmark of a
# training step of six zoo models, fused kernels against eager PyTorch and torch.compile (results
# under bench/results/). Extra arguments go to the benchmark runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
TRAIN=(--epochs 10 --lr 0.01 --lr-schedule cosine --batch-size 512 --overwrite --no-progress)
for model in dcnv2 deepfm; do
  .venv/bin/python -m rankops train --model "$model" "${TRAIN[@]}" --out "runs/$model"
done
# the same model on the reference (plain PyTorch) ops for two epochs: the speed-up is fused / reference
# samples/s, each its fastest epoch (the one least disturbed by other work on a shared machine)
.venv/bin/python -m rankops train --model dcnv2 "${TRAIN[@]}" --epochs 2 --backend reference --out runs/dcnv2-reference \
  > /dev/null
.venv/bin/python - <<'PY'
import json
fused, ref = (json.load(open(f"runs/{r}/metrics.json")) for r in ("dcnv2", "dcnv2-reference"))
f, r = (max(h["samples_per_s"] for h in m["history"]) for m in (fused, ref))
print(f"dcnv2 training speed (fastest epoch): fused {f:,.0f} samples/s, reference {r:,.0f} samples/s: {f / r:.2f}x")
PY
exec .venv/bin/python -m bench models "$@"
