#!/usr/bin/env bash
# The main job on built-in data: zoo models trained by `rankops train` on the built-in synthetic data
# (planted structure: each run reports its AUC beside the planted model's own), then the benchmark of
# a training step of six zoo models, fused kernels against eager PyTorch and torch.compile
# (results under bench/results/). Extra arguments go to the benchmark runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
for model in deepfm dcnv2; do
  .venv/bin/python -m rankops train --model "$model" --epochs 2 --out "runs/$model" --overwrite
done
exec .venv/bin/python -m bench models "$@"
