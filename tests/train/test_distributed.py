"""torchrun -m rankops train on 2 CPU processes (gloo) reaches the weights of one process on the same
global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# 2560 samples: 2304 to train = 9 global batches of 256, 128 a rank
ARGS = ["train", "--model", "dcnv2", "--samples", "2560", "--fields", "4", "--vocab", "50", "--epochs", "1",
        "--batch-size", "256", "--no-progress", "--threads", "1",
        "--model-config", '{"dnn_hidden_units": [32, 16], "cross_num": 2}']


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one(tmp_path):
    one = subprocess.run([sys.executable, "-m", "rankops", *ARGS, "--out", str(tmp_path / "one")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          f"--master_port={_port()}", "-m", "rankops", *ARGS, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert a["position"] == {**b["position"], "samples": a["position"]["samples"]}  # same steps; samples per rank
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    m = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m["processes"] == 2 and m["samples"] == a["position"]["samples"]
