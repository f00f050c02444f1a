"""rankops train --shard-embeddings: the tables sharded by TorchRec's DistributedModelParallel over 2
gloo processes end where one process ends on the same global batch (weights, the tables' row-wise
Adagrad state, validation metrics), and the gathered checkpoint loads in one process."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import torch

from rankops.train import cli
from tests.train.test_distributed import ENV, ROOT, _port

needs_torchrec = pytest.mark.skipif(importlib.util.find_spec("torchrec") is None,
                                    reason="--shard-embeddings needs TorchRec (requirements-anchors.txt)")

# DeepFM: its 4 embedding tables (D=8) and its first-order part (4 tables of width 1, held as 4
# copies: FBGEMM takes widths that are multiples of 4), both sharded; 2 epochs of 9 global
# batches of 256, 128 a rank; the tables by row-wise Adagrad, its lr on the warm-up + cosine schedule
# (TorchRec's fused optimizer takes the Trainer's lr every step)
ARGS = ["train", "--model", "deepfm", "--samples", "2560", "--fields", "4", "--vocab", "50", "--epochs", "2",
        "--batch-size", "256", "--no-progress", "--threads", "1", "--embedding-optimizer", "rowwise_adagrad",
        "--embedding-lr", "0.05", "--lr-schedule", "cosine", "--warmup-steps", "3",
        "--model-config", '{"dnn_hidden_units": [32, 16]}']


def _one_process(args) -> None:
    """``rankops`` in this process (saves an interpreter's and torch's start-up); --threads restored after."""
    threads = torch.get_num_threads()
    try:
        assert cli.main(args) == 0
    finally:
        torch.set_num_threads(threads)


def _two_processes(args) -> str:
    """``torchrun --nproc_per_node=2 -m rankops *args`` (gloo on loopback); its stderr."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                        f"--master_port={_port()}", "-m", "rankops", *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``run(name)``: the run directory of one process (``"one"``) or of 2 sharded ones (``"table_wise"``,
    ``"row_wise"``), each trained once, on first use; the torchrun log beside it."""
    tmp = tmp_path_factory.mktemp("sharding")
    done = {}

    def run(name):
        if name not in done:
            out = ["--out", str(tmp / name)]
            if name == "one":
                _one_process([*ARGS, *out])
                done[name] = (tmp / name, "")
            else:
                done[name] = (tmp / name, _two_processes([*ARGS, "--shard-embeddings", "--sharding", name, *out]))
        return done[name]

    return run


# table-wise: each rank owns half the tables (and their Adagrad state), the pooled features come
# back grouped by rank; row-wise: every table split in two halves of rows (beyond TorchRec's CPU
# list: FBGEMM's CPU kernels run it)
@needs_torchrec
@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_sharded_two_processes_equal_one(runs, sharding):
    (one, _), (two, log) = runs("one"), runs(sharding)
    a = torch.load(one / "checkpoint.pt", weights_only=False)
    b = torch.load(two / "checkpoint.pt", weights_only=False)
    assert a["position"]["step"] == b["position"]["step"] == 18
    assert sorted(b["model"]) == sorted(a["model"])  # the unsharded model's names, optimizer state included
    assert any(k.endswith("rowwise_adagrad_sum") for k in b["model"])
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    for k, v in m1["valid"].items():
        assert m2["valid"][k] == pytest.approx(v, abs=1e-6), k
    assert m2["processes"] == 2
    plan = m2["sharding"]
    assert set(plan) == {f"{p}.f{i}" for p in ("features.embeddings", "linear") for i in range(4)}
    want = {"table_wise on rank 0", "table_wise on rank 1"} if sharding == "table_wise" else {"row_wise on ranks 0,1"}
    assert set(plan.values()) == want
    assert "TorchRec's plan over 2 processes" in log


@needs_torchrec
def test_gathered_checkpoint_evaluates_in_one_process(runs, tmp_path, capsys):
    (one, _), (two, _) = runs("one"), runs("table_wise")
    assert cli.main(["eval", "--run", str(two), "--output", str(tmp_path / "eval.json")]) == 0
    got = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    want = json.loads((one / "metrics.json").read_text())["valid"]
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


@needs_torchrec
def test_sharded_resume_continues_as_one_process(runs, tmp_path):
    """--resume --epochs 3 scatters the gathered checkpoint (weights and Adagrad state) back into the
    shards: the third epoch ends where one process's resumed third epoch does."""
    (one, _), (two, _) = runs("one"), runs("table_wise")
    shutil.copytree(one, tmp_path / "one")
    shutil.copytree(two, tmp_path / "two")
    more = ["train", "--resume", "--epochs", "3", "--no-progress", "--threads", "1"]
    _one_process([*more, "--out", str(tmp_path / "one")])
    assert "resuming" in _two_processes([*more, "--out", str(tmp_path / "two")])
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert a["position"]["step"] == b["position"]["step"] == 27
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_needs_many_processes_and_torchrec(tmp_path, capsys, monkeypatch):
    args = ["train", "--model", "deepfm", "--samples", "256", "--shard-embeddings", "--out", str(tmp_path / "r")]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun" in err
    monkeypatch.setitem(sys.modules, "torchrec", None)  # as if it were not installed
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs TorchRec" in err and "pip install" in err
    assert not (tmp_path / "r").exists()  # nothing written
    assert cli.main(["train", "--sharding", "row_wise", "--out", str(tmp_path / "r")]) == 2
    assert "add --shard-embeddings" in capsys.readouterr().err


def test_narrow_tables_are_held_as_copies_that_step_as_one():
    """A width-D table sharded as k copies side by side: forward the mean of the copies, backward
    the whole gradient into each, so SGD moves every copy (and the mean) by lr * g, as one table."""
    from rankops.train.sharding import _Replicas, replicas

    assert [replicas(d) for d in (1, 2, 3, 4, 6, 8)] == [4, 2, 4, 1, 2, 1]
    x = torch.randn(5, 3).repeat(1, 4).requires_grad_()  # [b, k*D]: 4 equal copies of D=3
    y = _Replicas.apply(x, 4)
    torch.testing.assert_close(y, x[:, :3])
    g = torch.randn(5, 3)
    y.backward(g)
    torch.testing.assert_close(x.grad, g.repeat(1, 4))
