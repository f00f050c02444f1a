"""rankops train --shard-embeddings: the tables sharded by TorchRec's DistributedModelParallel over 2
gloo processes end where one process ends on the same global batch (weights, the tables' row-wise
Adagrad state, validation metrics), and the gathered checkpoint loads in one process."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

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


@needs_torchrec  # (its first check, the torchrun one, comes after the TorchRec one)
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


# one row-wise sharded table of 2M x 16 fp32 (122 MiB): each of 2 ranks holds 1M rows (61 MiB)
BIG_ROWS, BIG_DIM = 2_000_000, 16


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _rss_worker(out: Path, materialised: bool) -> None:
    """One rank of ``test_sharded_tables_are_never_whole_on_a_rank``: the growth of its peak RSS
    (VmHWM, reset to the current RSS by /proc/self/clear_refs) over building the model and sharding
    it; its shard's rows checked against ``init_rows``. ``materialised`` builds the tables whole
    first (the path before tables_on_meta), for comparison."""
    import torch.distributed as dist
    import torchrec  # noqa: F401  (imported before the baseline: its import is not the tables)

    from rankops.nn.embedding_bag import EmbeddingBagCollection, EmbeddingBagConfig, init_rows, tables_on_meta
    from rankops.train.sharding import ShardedModel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report = {"rank": rank, "table_mib": BIG_ROWS * BIG_DIM * 4 / 2**20}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError as e:
        report["skip"] = f"cannot reset the peak RSS ({e})"
    base = _status_kib("VmRSS")
    torch.manual_seed(0)
    with tables_on_meta(not materialised):
        model = torch.nn.Module()
        # and a narrow one, held as 4 side-by-side copies of width 3, each filled alike
        model.embeddings = EmbeddingBagCollection([EmbeddingBagConfig("big", BIG_ROWS, BIG_DIM),
                                                   EmbeddingBagConfig("narrow", 1000, 3)])
        model.head = torch.nn.Linear(BIG_DIM, 1)
    seed = model.embeddings.init_seed
    sharded = ShardedModel(model, sharding="row_wise")
    report["growth_mib"] = (_status_kib("VmHWM") - base) / 1024
    tensors = sharded._sharded_tensors()
    (shard,) = tensors["embeddings.embedding_bags.big.weight"].local_shards()
    r0, n = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
    report["shard_rows"] = [r0, r0 + n]
    for a in (r0, r0 + n // 2 - 7, r0 + n - 5):  # first, middle (across an init block edge) and last rows
        want = init_rows(seed, 0, BIG_ROWS, BIG_DIM, a, a + 5 if a == r0 + n - 5 else a + 10)
        assert torch.equal(shard.tensor[a - r0:a - r0 + len(want)], want), (rank, a)
    (shard,) = tensors["embeddings.embedding_bags.narrow.weight"].local_shards()
    r0, n = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
    assert tuple(shard.tensor.shape) == (n, 12) and n == 500
    assert torch.equal(shard.tensor, init_rows(seed, 1, 1000, 3, r0, r0 + n).repeat(1, 4)), rank
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@needs_torchrec
def test_sharded_tables_are_never_whole_on_a_rank(tmp_path):
    """Row-wise over 2 processes, a 122 MiB table: each rank's peak RSS grows by its 61 MiB shard
    and FBGEMM's change (74 MiB in all), never by the whole table (built whole first: 199 MiB, the
    table and the shard copied out of it); each shard holds the rows init_rows gives.
    By hand: ``torchrun --nproc_per_node=2 -m tests.train.test_sharding DIR [materialised]`` writes
    DIR/rank<r>.json."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                        f"--master_port={_port()}", "-m", "tests.train.test_sharding", str(tmp_path)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    if "skip" in reports[0]:
        pytest.skip(reports[0]["skip"])
    assert sorted(tuple(r["shard_rows"]) for r in reports) == [(0, BIG_ROWS // 2), (BIG_ROWS // 2, BIG_ROWS)]
    for r in reports:
        assert r["growth_mib"] < 0.75 * r["table_mib"], r  # the shard is half the table


if __name__ == "__main__":  # a rank of test_sharded_tables_are_never_whole_on_a_rank, under torchrun
    _rss_worker(Path(sys.argv[1]), materialised=sys.argv[2:] == ["materialised"])


@needs_torchrec
def test_uneven_last_batch_trains_sharded(tmp_path):
    """2293 training rows in global batches of 256 leave 245 for the last one: cut to 122 a rank (the
    sharded tables' all-gather takes equal batches; before, 123 and 122 stopped the run)."""
    args = [a if a != "2560" else "2548" for a in ARGS]
    _two_processes([*args, "--epochs", "1", "--shard-embeddings", "--sharding", "row_wise", "--out", str(tmp_path)])
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["position"]["step"] == 9
