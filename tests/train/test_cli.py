"""The ``rankops`` command line end to end: train -> eval -> export -> predict in a fresh process, on
synthetic, Criteo-format and CSV / Parquet data the tests write; resume; bad data; user errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rankops.data.criteo import write_criteo
from rankops.train import cli
from tests.data.test_readers import write_tabular

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = ["--samples", "3000", "--fields", "4", "--vocab", "50", "--batch-size", "256", "--no-progress",
        "--model-config", '{"dnn_hidden_units": [32, 16]}']


def run(argv, capsys):
    """``rankops <argv>`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def fresh(argv, timeout=180):
    """``python -m rankops <argv>`` in a new process."""
    return subprocess.run([sys.executable, "-m", "rankops", *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=timeout)


def read_scores(path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def eager_scores(run_dir, data=None) -> np.ndarray:
    """The run's best checkpoint scoring ``data`` in this process, through the trainer."""
    from rankops.train.loop import Trainer, TrainConfig

    cfg, fm, spec, schema, model, _ = cli._restore(Path(run_dir), "best")
    ds, _ = cli.load_eval_data(cfg, fm, spec, data, strict=False, require_labels=False)
    preds, _ = Trainer(model, TrainConfig(batch_size=4096, progress=False)).predict(ds)
    return preds.numpy()


# ---------------------------------------------------------------------------------------------


def test_synthetic_train_eval_export_predict(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run(["train", "--model", "deepfm", "--epochs", "2", "--out", out, *TINY], capsys)
    assert rc == 0, err
    for f in ("checkpoint.pt", "metrics.json", "curves.png", "schema.yaml", "run.json"):
        assert (out / f).is_file(), f
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "deepfm" and len(m["history"]) == 2 and m["samples_per_s"] > 0
    assert 0.5 < m["valid"]["click/auc"] <= 1 and m["ceiling"]["click"] > 0.6
    assert m["model_config"]["dnn_hidden_units"] == [32, 16]
    assert "click" in stdout and "auc" in stdout and "planted ceiling" in stdout
    rc, stdout, err = run(["eval", "--run", out], capsys)
    assert rc == 0, err
    ev = json.loads((out / "eval.json").read_text())["metrics"]
    assert ev["click/auc"] == pytest.approx(m["valid"]["click/auc"], abs=1e-12)
    rc, stdout, err = run(["export", "--run", out], capsys)
    assert rc == 0, err and (out / "model.pt2").is_file()
    # a fresh process reloads the export (no training code) and scores the validation split
    r = fresh(["predict", "--model", out / "model.pt2", "--output", tmp_path / "scores.csv"])
    assert r.returncode == 0, r.stderr
    got = read_scores(tmp_path / "scores.csv")
    want = eager_scores(out)
    assert got.shape == want.shape == (300, 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_criteo_train_early_stopping_eval_export_predict(tmp_path, capsys):
    train, new = tmp_path / "day0.tsv", tmp_path / "day1.tsv"
    write_criteo(train, 2000, seed=1)
    lines = train.read_text().splitlines()
    lines[10] = "1\t2\t3"  # line 11: malformed
    train.write_text("\n".join(lines) + "\n")
    write_criteo(new, 500, seed=2)
    out = tmp_path / "run"
    rc, stdout, err = run(["train", "--model", "dcnv2", "--data", train, "--hash-size", "200", "--epochs", "2",
                           "--batch-size", "256", "--early-stopping", "auc", "--patience", "1", "--out", out,
                           "--embedding-optimizer", "rowwise_adagrad", "--no-progress", "--stream",
                           "--chunk-rows", "700",
                           "--model-config", '{"dnn_hidden_units": [32], "cross_num": 2}'], capsys)
    assert rc == 0, err
    assert "skipped 1 malformed line(s)" in err and "lines 11" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["bad_lines"][str(train)]["first_lines"] == [[11, "wrong field count"]]
    assert (out / "best.pt").is_file() and (out / "feature_map.json").is_file() and m["checkpoint"] == "best"
    fm = json.loads((out / "feature_map.json").read_text())
    assert fm["stats"]["I1"]["count"] > 1500 and fm["columns"][14]["hash_size"] == 200
    rc, stdout, err = run(["eval", "--run", out, "--data", new], capsys)
    assert rc == 0, err and "label" in stdout
    assert run(["export", "--run", out], capsys)[0] == 0
    r = fresh(["predict", "--model", out / "model.pt2", "--data", new, "--output", tmp_path / "s.csv"])
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(read_scores(tmp_path / "s.csv"), eager_scores(out, str(new)), rtol=0, atol=1e-6)


def test_csv_and_parquet_with_schema(tmp_path, capsys):
    csv, parquet, spec, _ = write_tabular(tmp_path, n=1500)
    out = tmp_path / "run"
    rc, stdout, err = run(["train", "--model", "din", "--data", csv, "--schema", spec, "--epochs", "1",
                           "--batch-size", "128", "--out", out, "--no-progress"], capsys)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert "click/gauc" in m["valid"]  # the uid column is the group
    assert (out / "data_spec.yaml").is_file()
    # a file of another format is read with the same feature map: same scores for the same rows
    a = eager_scores(out, str(csv))
    b = eager_scores(out, str(parquet))
    np.testing.assert_array_equal(a, b)
    # a model torch.export cannot trace (DIN's sequence lookup had a data-dependent shape) is exported
    # as a weights + config bundle, which predict rebuilds; either way predict serves the same scores
    rc, _, err = run(["export", "--run", out], capsys)
    exported = out / "model.pt2" if (out / "model.pt2").is_file() else out / "model.rankops.pt"
    assert rc == 0 and exported.is_file() and (exported.suffix == ".pt2" or "bundle" in err), err
    rc, _, err = run(["predict", "--model", exported, "--data", parquet, "--output", tmp_path / "p.parquet"], capsys)
    assert rc == 0, err
    import pyarrow.parquet as pq

    np.testing.assert_allclose(pq.read_table(tmp_path / "p.parquet")["click"].to_numpy(), a[:, 0], atol=1e-6, rtol=0)


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_resume_equals_uninterrupted(tmp_path, capsys):
    # a constant lr: --max-steps (the interruption here) is also a decaying schedule's horizon
    base = ["--model", "deepfm", *TINY, "--embedding-optimizer", "rowwise_adagrad", "--lr-schedule", "constant"]
    assert run(["train", *base, "--epochs", "2", "--out", tmp_path / "a"], capsys)[0] == 0
    # stopped inside epoch 2 (11 batches an epoch), then resumed twice: by step, then to the end
    assert run(["train", *base, "--epochs", "2", "--max-steps", "14", "--out", tmp_path / "b"], capsys)[0] == 0
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["position"]["batch"] == 3
    rc, _, err = run(["train", "--resume", "--max-steps", "18", "--out", tmp_path / "b", "--no-progress"], capsys)
    assert rc == 0 and "resuming" in err and "epoch 2, batch 3" in err, err
    rc, _, err = run(["train", "--resume", "--out", tmp_path / "b", "--no-progress"], capsys)
    assert rc == 0 and "epoch 2, batch 7" in err, err
    a, b = _weights(tmp_path / "a" / "checkpoint.pt"), _weights(tmp_path / "b" / "checkpoint.pt")
    assert a.keys() == b.keys() and any("rowwise_adagrad_sum" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert ma["valid"] == mb["valid"]


class Interrupting:
    """A data set that raises KeyboardInterrupt after ``after`` batches of its first pass."""

    def __init__(self, data, after):
        self.data, self.after, self.schema = data, after, data.schema

    def num_batches(self, bs):
        return self.data.num_batches(bs)

    def batches(self, bs, **kw):
        for i, b in enumerate(self.data.batches(bs, **kw)):
            if self.after is not None and i == self.after:
                self.after = None
                raise KeyboardInterrupt
            yield b


def test_resume_mid_epoch_is_bitwise(tmp_path):
    """Killed in the middle of an epoch, resumed from the last step checkpoint: the same weights
    (dense optimizer, fused table state, data position and RNG all restored)."""
    import rankops.models as zoo
    from rankops.ops.embedding_bag import FusedOptimizer
    from rankops.train.loop import Trainer, TrainConfig

    data = cli._synthetic(dict(cli.TRAIN_DEFAULTS, samples=1000, fields=4, vocab=40, valid_fraction=0.1)).train
    cfg = TrainConfig(epochs=2, batch_size=100, checkpoint_every=4, progress=False)

    def model():
        torch.manual_seed(0)
        return zoo.build("dcnv2", data.schema, dnn_hidden_units=(16,), dnn_dropout=0.1,
                         embedding_optimizer=FusedOptimizer("rowwise_adagrad", 0.05))

    full = Trainer(model(), cfg, tmp_path / "full")
    full.fit(data)
    broken = Trainer(model(), cfg, tmp_path / "broken")
    with pytest.raises(KeyboardInterrupt):
        broken.fit(Interrupting(data, after=6))  # epoch 1 has 9 batches; the last checkpoint is at step 4
    resumed = Trainer(model(), cfg, tmp_path / "broken")
    resumed.resume(tmp_path / "broken" / "checkpoint.pt")
    assert (resumed.position.epoch, resumed.position.batch) == (0, 4)
    resumed.fit(data)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


KILL_WRITER = """
import os, signal, sys, torch
import rankops.models as zoo
from rankops.train import loop
from rankops.data.schema import Schema
schema = Schema(sparse=[{"name": "a", "vocab_size": 10, "embedding_dim": 4}])
t = loop.Trainer(zoo.build("dnn", schema, dnn_hidden_units=(8,)), loop.TrainConfig(progress=False), sys.argv[1])
t.save_checkpoint()
real = torch.save
def dying_save(obj, f):
    real(obj, f)
    f.flush()
    f.truncate(f.tell() // 2)
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write, before the rename
with torch.no_grad():
    for p in t.model.parameters():
        p.add_(1.0)
torch.save = dying_save
t.save_checkpoint()
"""


def test_killed_checkpoint_writer_leaves_previous_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, "-c", KILL_WRITER, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       env=ENV, timeout=120)
    assert r.returncode == -9, r.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    assert leftovers and all(n.startswith(".checkpoint.pt.tmp") for n in leftovers)  # the half-written file
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)  # the previous one, whole
    assert state["position"]["step"] == 0
    bias = [v for k, v in state["model"].items() if k.endswith("bias")]
    assert bias and all(float(b.abs().max()) < 1.0 for b in bias)  # not the +1 weights being written


def test_malformed_lines_and_strict(tmp_path, capsys):
    csv, _, spec, _ = write_tabular(tmp_path, n=400)
    lines = csv.read_text().splitlines()
    f = lines[7].split(",")
    f[1] = "cheap"  # the price column, line 8 of the file (line 1 is the header)
    lines[7] = ",".join(f)
    csv.write_text("\n".join(lines) + "\n")
    rc, _, err = run(["train", "--data", csv, "--schema", spec, "--out", tmp_path / "ok", "--no-progress",
                      "--batch-size", "128"], capsys)
    assert rc == 0 and "skipped 1 malformed line(s) (1 unparsable number); lines 8" in err
    out = tmp_path / "strict"
    rc, _, err = run(["train", "--data", csv, "--schema", spec, "--out", out, "--strict"], capsys)
    assert rc == 2 and err.count("\n") == 1 and ":8: column 'price': 'cheap' is not a number" in err
    assert not out.exists()  # nothing written


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs of different models, for the error cases."""
    d = tmp_path_factory.mktemp("runs")
    for model in ("deepfm", "dcnv2"):
        assert cli.main(["train", "--model", model, "--out", str(d / model), *TINY]) == 0
    return d


def user_errors(d: Path):
    csv, _, spec, _ = write_tabular(d, n=50)
    bad_spec = d / "bad_spec.yaml"
    bad_spec.write_text("label: [click]\nsparse: [item, colour]\n")
    cfg = d / "cfg.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    new = d / "new"
    return {
        "missing data file": (["train", "--data", d / "nope.csv", "--schema", spec, "--out", new], "no file"),
        "unknown model": (["train", "--model", "deepfmm", *TINY, "--out", new], "unknown model 'deepfmm'"),
        "schema names a missing column": (["train", "--data", csv, "--schema", bad_spec, "--out", new],
                                          "no column(s) ['colour']"),
        "csv without a schema": (["train", "--data", csv, "--out", new], "needs --schema"),
        "checkpoint of another model": (["eval", "--run", d / "deepfm", "--checkpoint",
                                         d / "dcnv2" / "checkpoint.pt"], "holds a 'dcnv2' model, not 'deepfm'"),
        "resume without a checkpoint": (["train", "--resume", "--out", d / "empty"], "holds no checkpoint.pt"),
        "run exists": (["train", "--out", d / "deepfm", *TINY], "already holds a run"),
        "unknown config option": (["train", "--config", cfg, "--out", new], "unknown option(s) ['learning_rate']"),
        "unknown flag": (["train", "--epoch", "3", "--out", new], "unrecognized arguments: --epoch"),
        "early stopping on no task": (["train", "--early-stopping", "ctr/auc", *TINY, "--out", d / "x"], "no task 'ctr'"),
        "bad model option": (["train", "--model-config", '{"cross_nums": 2}', "--model", "dcnv2", *TINY[:-2],
                              "--out", d / "y"], "unknown option(s) ['cross_nums']"),
        "predict with no model": (["predict", "--model", d / "none.pt2", "--output", d / "s.csv"], "no file"),
        "eval of no run": (["eval", "--run", d / "nothing"], "not a training run directory"),
        "mismatched data for eval": (["eval", "--run", d / "deepfm", "--data", csv], "built-in synthetic data"),
    }


CASES = ["missing data file", "unknown model", "schema names a missing column", "csv without a schema",
         "checkpoint of another model", "resume without a checkpoint", "run exists", "unknown config option",
         "unknown flag", "early stopping on no task", "bad model option", "predict with no model", "eval of no run",
         "mismatched data for eval"]


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line(trained, case, capsys):
    argv, message = user_errors(trained)[case]
    before = sorted(p.name for p in trained.rglob("*"))
    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("rankops") and "Traceback" not in err, err
    assert message in err, err
    assert sorted(p.name for p in trained.rglob("*")) == before  # nothing written, nothing half-written


def test_user_error_in_a_fresh_process(tmp_path):
    r = fresh(["train", "--data", tmp_path / "missing.tsv"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "no file" in r.stderr and r.stdout == ""


def test_info(capsys):
    rc, out, _ = run(["info"], capsys)
    assert rc == 0 and "dcnv2" in out and "adult" in out


def test_config_file_and_flags_override(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: dcnv2\nepochs: 2\nbatch-size: 512\nsamples: 2000\nfields: 3\nvocab: 30\n"
                   "model_config: {dnn_hidden_units: [8], cross_num: 1}\n")
    rc, _, err = run(["train", "--config", cfg, "--epochs", "1", "--out", tmp_path / "r", "--no-progress"], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "r" / "run.json").read_text())
    assert (r["model"], r["epochs"], r["batch_size"], r["samples"]) == ("dcnv2", 1, 512, 2000)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["model_config"]["cross_num"] == 1 and len(m["history"]) == 1


def test_planted_sets_by_name_and_their_options(tmp_path, capsys):
    rc, stdout, err = run(["train", "--model", "mmoe", "--data", "synthetic:multitask", "--samples", "2000",
                           "--batch-size", "256", "--no-progress", "--out", tmp_path / "mt"], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "mt" / "metrics.json").read_text())
    assert set(m["ceiling"]) == {"a", "b"} and {"a/auc", "b/auc"} <= set(m["valid"])
    assert "synthetic:multitask" in m["data"]
    # a flag the planted set has no option for, an unknown set, an unknown data_config key: one line, exit 2
    for argv, words in ((["--data", "synthetic:sequence", "--fields", "4"], "--fields does not apply"),
                        (["--data", "synthetic:nope"], "unknown planted data set"),
                        (["--data", "synthetic:crosses", "--model-config", "{}"], None)):
        if words is None:
            continue
        rc, _, err = run(["train", "--model", "dnn", *argv, "--samples", "500", "--out", tmp_path / "x"], capsys)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: dnn\ndata: synthetic:pairwise\ndata_config: {num_fields: 3, bogus: 1}\n")
    rc, _, err = run(["train", "--config", cfg, "--out", tmp_path / "y"], capsys)
    assert rc == 2 and "bogus" in err, err


def test_lr_schedule_decays_to_zero_and_is_a_function_of_the_step():
    from rankops.train.loop import TrainConfig, lr_factor

    cos = TrainConfig(lr_schedule="cosine", warmup_steps=10)
    f = [lr_factor(cos, s, 110) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 1e-3
    lin = TrainConfig(lr_schedule="linear")
    assert lr_factor(lin, 50, 100) == pytest.approx(0.5) and lr_factor(TrainConfig(), 99, 100) == 1.0
    assert lr_factor(lin, 5, None) == 1.0  # unknown length: no decay
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


@pytest.mark.parametrize("recipe", __import__("rankops.models.recipes", fromlist=["names"]).names())
def test_every_recipe_trains_from_its_yaml_through_the_cli(recipe, tmp_path, capsys):
    """`rankops train --config models/recipes/<name>.yaml` (the README's command for each recipe),
    cut to a few steps on a small draw of its planted set: the YAML's keys are train flags."""
    from rankops.models import recipes

    rc, stdout, err = run(["train", "--config", recipes.yaml_path(recipe), "--samples", "1000", "--epochs", "1",
                           "--max-steps", "3", "--batch-size", "128", "--no-progress", "--out", tmp_path / recipe],
                          capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / recipe / "metrics.json").read_text())
    assert m["model"] == recipe and m["ceiling"] and m["valid"]
    if recipe == "mtrec":  # sequences of id lists ([B, L, item_len]) trace through torch.export too
        rc, stdout, err = run(["export", "--run", tmp_path / recipe], capsys)
        assert rc == 0 and (tmp_path / recipe / "model.pt2").is_file() and "torch.export program" in stdout, err


class Stream:
    """A data set that, like a file streamed in chunks, knows its length only after a first full pass."""

    def __init__(self, data, interrupt_at=None):
        self.data, self.schema, self.known, self.interrupt_at = data, data.schema, False, interrupt_at

    def num_batches(self, bs):
        return self.data.num_batches(bs) if self.known else None

    def batches(self, bs, *, start=0, **kw):
        for i, b in enumerate(self.data.batches(bs, start=start, **kw), start):
            if self.interrupt_at is not None and (kw.get("epoch"), i) == self.interrupt_at:
                self.interrupt_at = None
                raise KeyboardInterrupt
            yield b
        self.known = True


def test_a_streams_lr_schedule_resumes_exactly(tmp_path):
    """A stream learns its length at the end of its first pass; from then on the cosine schedule runs
    over the whole run, and a run killed in epoch 2 and resumed on a fresh stream (length unknown
    again) follows the same schedule: the checkpoint carries the batches per epoch."""
    import rankops.models as zoo
    from rankops.train.loop import Trainer, TrainConfig

    data = cli._synthetic(dict(cli.TRAIN_DEFAULTS, samples=1000, fields=4, vocab=40, valid_fraction=0.1)).train
    cfg = TrainConfig(epochs=3, batch_size=100, checkpoint_every=4, progress=False, lr_schedule="cosine")

    def model():
        torch.manual_seed(0)
        return zoo.build("dcnv2", data.schema, dnn_hidden_units=(16,))

    full = Trainer(model(), cfg, tmp_path / "full")
    full.fit(Stream(data))
    assert full.total_steps == 27 and full.optimizer.param_groups[0]["lr"] < 0.01 * cfg.lr  # decayed to ~0
    broken = Trainer(model(), cfg, tmp_path / "broken")
    with pytest.raises(KeyboardInterrupt):
        broken.fit(Stream(data, interrupt_at=(1, 6)))  # epoch 2, batch 6; its last checkpoint: step 12
    resumed = Trainer(model(), cfg, tmp_path / "broken")
    resumed.resume(tmp_path / "broken" / "checkpoint.pt")
    assert (resumed.position.epoch, resumed.position.batch, resumed.batches_per_epoch) == (1, 3, 9)
    resumed.fit(Stream(data))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_kept_on_cpu_unless_released(tmp_path):
    """On the CPU, rankops train keeps freed blocks for reuse (rankops.keep_freed_memory) unless
    --release-memory; metrics.json says which (fresh processes: the setting is process-wide)."""
    kept = {}
    for flag in ([], ["--release-memory"]):
        out = tmp_path / ("release" if flag else "keep")
        r = fresh(["train", "--model", "lr", "--out", out, *TINY, *flag])
        assert r.returncode == 0, r.stderr
        kept[bool(flag)] = json.loads((out / "metrics.json").read_text())["freed_memory_kept"]
    assert kept == {False: True, True: False}


def test_streamed_file_knows_its_length_from_the_feature_map_pass(tmp_path, capsys):
    """The feature map's fitting pass counts the training rows, so a stream's lr schedule decays over
    its first epoch too (it ran at the base rate until the end of the first pass)."""
    data = tmp_path / "day0.tsv"
    write_criteo(data, 1000, seed=1)
    out = tmp_path / "run"
    rc, _, err = run(["train", "--model", "dcnv2", "--data", data, "--hash-size", "100", "--stream", "--chunk-rows",
                      "300", "--epochs", "1", "--batch-size", "100", "--lr", "0.01", "--lr-schedule", "linear",
                      "--out", out, "--no-progress", "--model-config", '{"dnn_hidden_units": [16], "cross_num": 1}'],
                     capsys)
    assert rc == 0, err
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    steps = ck["position"]["step"]
    assert ck["batches_per_epoch"] == steps and steps >= 8
    # the last step ran at lr * (1 - (steps - 1) / steps)
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 / steps)


@pytest.mark.parametrize("model, planted", [("din", "sequence"), ("mmoe", "sinusoid_tasks"), ("esmm", "funnel"),
                                            ("taobao", "sequence_tasks")])
def test_model_without_data_trains_on_the_planted_set_it_needs(tmp_path, capsys, model, planted):
    """The default crosses set has no behaviour sequence and one task: DIN, MMoE, ESMM and a recipe
    pick the planted set that serves them, and say so."""
    rc, stdout, err = run(["train", "--model", model, "--epochs", "1", "--samples", "1500", "--batch-size", "256",
                           "--no-progress", "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert f"no --data: {model} trains on" in err and f"synthetic:{planted}" in err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["data"].startswith(f"synthetic:{planted} (1500 samples")
    run_cfg = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_cfg["data"] == f"synthetic:{planted}"  # eval / resume read the same data


def test_data_named_in_a_config_is_kept(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: din\ndata: synthetic:sequence_tasks\ndata_config: {num_samples: 1200}\n")
    rc, _, err = run(["train", "--config", cfg, "--epochs", "1", "--batch-size", "256", "--no-progress",
                      "--out", tmp_path / "run"], capsys)
    assert rc == 0, err
    assert "no --data" not in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data"].startswith("synthetic:sequence_tasks")


def test_planted_data_trains_with_its_setup_unless_told_otherwise(tmp_path, capsys):
    """On a planted set, what neither a flag nor --config sets comes from the set's setup (PLANTED_SETUP:
    1 epoch at lr 1e-3 left DIN far from its ceiling), said in one line; other data keeps the plain defaults."""
    small = ["--samples", "600", "--no-progress", "--model-config", '{"dnn_hidden_units": [8]}']
    rc, _, err = run(["train", "--model", "dnn", *small, "--epochs", "1", "--out", tmp_path / "a"], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "a" / "run.json").read_text())
    want = cli.PLANTED_SETUP["crosses"]
    assert (r["epochs"], r["lr"], r["lr_schedule"], r["batch_size"]) == (1, want["lr"], want["lr_schedule"],
                                                                         want["batch_size"])
    assert err.count("planted setup") == 1 and "epochs" not in err.split("planted setup")[1], err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: dnn\nlr: 0.002\nepochs: 1\n")
    rc, _, err = run(["train", "--config", cfg, *small, "--batch-size", "128", "--out", tmp_path / "b"], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "b" / "run.json").read_text())
    assert (r["epochs"], r["lr"], r["lr_schedule"], r["batch_size"]) == (1, 0.002, "cosine", 128)
    setup = cli.PLANTED_SETUP["sequence"]
    cfg = cli.train_config(cli._parser().parse_args(["train", "--model", "din"]))
    assert cfg["data"] == "synthetic:sequence" and all(cfg[k] == v for k, v in setup.items())
    cfg = cli.train_config(cli._parser().parse_args(["train", "--data", "day0.tsv"]))
    assert (cfg["epochs"], cfg["lr"], cfg["lr_schedule"]) == (1, 1e-3, "constant") and not cfg.get("_setup_note")
