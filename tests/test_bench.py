"""The benchmark harness (bench/common.py) on tiny cases: it runs, writes csv/md/png with the
expected rows and columns, records a failing provider instead of crashing, and the CLI dispatches.
Speed is never asserted here."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import rankops
from bench import report
from bench.common import MODES, Bench, measure_peak, peak_memory, providers
from rankops.ops.interaction import reference
from tests.utils import require

CASE = dict(B=8, F=5, D=4)
GRAD_MODES = ("fwd", "fwd+bwd")


def _ref(x):
    return reference.fm_interaction(x, True)


def _op(x):
    return rankops.fm_interaction(x, True)


def _broken(x):
    raise RuntimeError("this provider always fails")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_harness_writes_csv_md_png(tmp_path):
    require("cpp", "cpu")
    bench = Bench("tiny", "cpu", out_dir=tmp_path, min_time=0.01, peak=1.0, progress=False)
    provs = providers(reference=_ref, op=_op, device="cpu", compile=False)
    assert set(provs) == {"eager", "cpp"}  # no triton interpreter, no cuda on a CPU device
    provs["broken"] = _broken
    for c in bench.grid(mode=GRAD_MODES):
        x = torch.randn(CASE["B"], CASE["F"], CASE["D"], requires_grad=c["mode"] == "fwd+bwd")
        rows = bench.run(op="fm_interaction", case=CASE, mode=c["mode"], inputs=(x,), providers=provs,
                         bytes=x.numel() * 4, flops=3 * x.numel())
        assert [r["provider"] for r in rows] == ["eager", "cpp", "broken"]
    paths = bench.save()
    for kind in ("csv", "md", "png"):
        assert paths[kind].exists() and paths[kind].stat().st_size > 0, kind
    assert paths["csv"].name == f"tiny-{bench.tag}.csv" and bench.tag.startswith("cpu-")

    rows = _read(paths["csv"])
    assert len(rows) == 2 * 3
    for col in ("op", "case", "B", "F", "D", "provider", "mode", "dtype", "median_ms", "p20_ms", "p80_ms",
                "gbps", "bw_frac", "tflops", "flops_frac", "vs_eager", "vs_compile", "rel_err", "error"):
        assert col in rows[0], col
    assert {(r["provider"], r["mode"]) for r in rows} == {(p, m) for p in ("eager", "cpp", "broken")
                                                           for m in GRAD_MODES}
    for r in rows:
        assert (r["op"], r["dtype"], r["B"], r["F"], r["D"]) == ("fm_interaction", "fp32", "8", "5", "4")
        if r["provider"] == "broken":
            assert "this provider always fails" in r["error"] and r["median_ms"] == ""
            continue
        assert r["error"] == ""
        p20, med, p80 = float(r["p20_ms"]), float(r["median_ms"]), float(r["p80_ms"])
        assert 0 < p20 <= med <= p80
        assert float(r["gbps"]) > 0 and float(r["vs_eager"]) > 0 and r["vs_compile"] == ""
        assert float(r["rel_err"]) < 1e-5  # cpp computes what eager computes, fwd and grads
    md = paths["md"].read_text()
    assert "## fm_interaction - fwd+bwd - fp32" in md and "cpp vs eager" in md and "memory bandwidth" in md


def test_step_mode_and_extra_baseline(tmp_path):
    """"step": the provider runs a whole training step itself (here an SGD step on its own weight);
    a run's own anchor gets its vs_<anchor> column, in the csv and the markdown."""
    assert "step" in MODES
    bench = Bench("steps", "cpu", out_dir=tmp_path, min_time=0.01, bandwidth=1.0, progress=False)
    bench.baselines = ("eager", "compile", "anchor")
    weights = {p: torch.zeros(4, requires_grad=True) for p in ("eager", "anchor", "ours")}

    def step(name):
        def fn(x):
            w = weights[name]
            (w * x).sum().backward()  # grad enabled although the harness times without autograd.grad
            with torch.no_grad():
                w -= 0.1 * w.grad
            w.grad = None
        return fn

    rows = bench.run(op="sgd", case=dict(N=4), mode="step", dtype=torch.float32, inputs=(torch.ones(4),),
                     providers={p: step(p) for p in weights})
    assert [r["provider"] for r in rows] == ["eager", "anchor", "ours"]
    assert all(not r.get("error") and r["samples"] >= 10 for r in rows)
    assert all(float(w[0]) < -0.5 for w in weights.values())  # every provider stepped, many times
    assert "rel_err" not in rows[2] and rows[2]["vs_anchor"] > 0
    paths = bench.save()
    assert "vs_anchor" in _read(paths["csv"])[0]
    md = paths["md"].read_text()
    assert "## sgd - step - fp32" in md and "ours vs anchor" in md and "anchor vs eager" in md
    report.redraw(paths["csv"])  # the run's own anchor survives a redraw from the csv
    assert paths["md"].read_text() == md


def test_filters(tmp_path):
    bench = Bench("f", "cpu", out_dir=tmp_path, cases=["B=8,16 mode=fwd"], providers=["eager"], bandwidth=1.0,
                  progress=False)
    assert [c["B"] for c in bench.grid(B=[8, 16, 32], mode=["fwd"])] == [8, 16]
    assert list(bench.grid(B=[8], mode=["fwd+bwd"])) == []
    x = torch.randn(16, 5, 4)
    rows = bench.run(op="fm_interaction", case=dict(B=16, F=5, D=4), mode="fwd", inputs=(x,),
                     providers={"eager": _ref, "other": _ref})
    assert [r["provider"] for r in rows] == ["eager"]
    assert bench.run(op="fm_interaction", case=dict(B=32, F=5, D=4), mode="fwd", inputs=(x,),
                     providers={"eager": _ref}) == []
    with pytest.raises(ValueError):
        Bench("f", "cpu", cases=["B"], bandwidth=1.0)


def test_peak_memory(tmp_path):
    """memory=True adds peak_MiB: a provider that holds a 4 MiB temporary shows at least that, one
    that allocates only its small output much less; rankops' huge-page outputs are counted too."""
    require("cpp", "cpu")

    def big(x):
        t = torch.empty(1 << 20)  # 4 MiB, freed before returning
        t.fill_(1.0)
        return x * t[:1]

    assert peak_memory(lambda: big(torch.ones(3)), "cpu") >= 4 << 20
    with rankops.use_backend("cpp"):  # an output of 8 MiB from rankops' huge-page allocator
        assert peak_memory(lambda: rankops.cross_net(torch.ones(2048, 1024), torch.zeros(1, 1024, 1024),
                                                      torch.zeros(1, 1024)), "cpu") >= 8 << 20
    bench = Bench("m", "cpu", out_dir=tmp_path, min_time=0.01, bandwidth=1.0, progress=False)
    x = torch.randn(8, 5, 4)
    rows = bench.run(op="fm_interaction", case=CASE, mode="fwd", inputs=(x,), providers={"eager": _ref, "big": big},
                     memory=True)
    assert rows[1]["peak_MiB"] >= 4 and rows[0]["peak_MiB"] < 1
    assert "big peak MiB" in bench.save()["md"].read_text()


def test_peak_is_measured():
    tflops, what = measure_peak(torch.device("cpu"), n=128)
    assert tflops > 0 and "fp32 matmul" in what


def test_cli_quick(tmp_path):
    require("cpp", "cpu")
    from bench.__main__ import main

    assert main(["interaction", "--device", "cpu", "--quick", "--providers", "eager", "cpp", "--cases",
                 "op=fm_interaction", "mode=fwd", "--min-time", "0.01", "--out", str(tmp_path)]) == 0
    (csv_path,) = tmp_path.glob("interaction-cpu-*.csv")
    rows = _read(csv_path)
    assert [(r["op"], r["mode"], r["provider"]) for r in rows] == [
        ("fm_interaction", "fwd", "eager"), ("fm_interaction", "fwd", "cpp")]
    assert rows[0]["case"] == "B=4096 F=39 D=16"
    assert (tmp_path / csv_path.name.replace(".csv", ".png")).exists()


def test_gather_floor_and_limits(tmp_path):
    """The gather floor reads exactly the looked-up rows (its per-thread sums add up to their sum, in
    either order), and a run's limits get no rel_err and a table of times over the floor."""
    from bench import gather_floor

    gen = torch.Generator().manual_seed(0)
    T, R, D, B, L = 3, 50, 16, 8, 2
    weights = torch.randn(T * R, D, generator=gen)
    toff = torch.arange(0, (T + 1) * R, R)
    idx = torch.randint(0, R, (T * B * L,), generator=gen)
    off = torch.arange(0, T * B * L + 1, L)
    floors = gather_floor.providers(weights, toff, idx, off, B, gen)
    rows = (idx + toff[:-1].repeat_interleave(B * L))
    torch.testing.assert_close(floors["floor"](idx, off).sum(0), weights[rows].sum(0), rtol=1e-5, atol=1e-5)
    got = floors["floor-sorted"](idx, off).sum(0)  # its own sorted id sets: the same count per table
    assert got.shape == (D,) and torch.isfinite(got).all()
    assert gather_floor.supported(weights) and not gather_floor.supported(weights[:, :15])

    bench = Bench("floors", "cpu", out_dir=tmp_path, min_time=0.01, bandwidth=1.0, progress=False)
    bench.limits = tuple(floors)

    def loop(idx, off):
        return torch.cat([torch.nn.functional.embedding_bag(idx[t * B * L:(t + 1) * B * L], weights[t * R:(t + 1) * R],
                                                            off[:B + 1], mode="sum", include_last_offset=True)
                          for t in range(T)], 1)

    out = bench.run(op="bags", case=dict(B=B), inputs=(idx, off), providers=dict(eager=loop, **floors),
                    bytes=idx.numel() * D * 4)
    assert [r["provider"] for r in out] == ["eager", "floor", "floor-sorted"]
    assert out[0]["rel_err"] == 0 and all("rel_err" not in r and r["median_ms"] > 0 for r in out[1:])
    assert all("gbps" not in r for r in out[1:])  # the op's bytes are not what a limit moves
    paths = bench.save()
    md = paths["md"].read_text()
    assert "times over the floor" in md and "eager / floor" in md and "floor vs eager" not in md
    # a redraw from the csv gives the same markdown (limits and all) and a new plot
    paths["png"].unlink()
    report.redraw(paths["csv"])
    assert paths["md"].read_text() == md and paths["png"].exists()


def test_gather_floor_builds_in_this_checkout_and_clears_a_stale_lock():
    """The floor's extension builds under this checkout's build/, one folder per torch version (the shared
    ~/.cache default mixed torch versions), and a lock left by a killed build is cleared instead of
    waited on forever; a fresh lock (a build under way) is kept."""
    import os
    import time

    from bench import gather_floor

    d = gather_floor.build_dir()
    root = Path(__file__).resolve().parents[1]
    assert d.is_relative_to(root / "build") and torch.__version__ in d.name
    lock = d / "lock"
    try:
        lock.touch()
        old = time.time() - gather_floor.STALE_LOCK_S - 60
        os.utime(lock, (old, old))
        assert gather_floor.build_dir() == d and not lock.exists()
        lock.touch()
        assert gather_floor.build_dir() == d and lock.exists()
    finally:
        lock.unlink(missing_ok=True)


def test_step_floor_counts_the_products_inside_our_ops():
    """bench.models' floor counts the FLOPs inside the declared ops (their references inline): a
    DCN-V2 step holds at least its cross layers' products, forward (2 B N^2 each) and backward
    (4 B N^2), which a dispatch mode would see as one opaque call each."""
    from bench.models import schema_for, step_floor
    import rankops.models as zoo
    from rankops.data.synthetic import random_batch

    B, L = 64, 3
    schema = schema_for("dcnv2", 100, 4, 10)
    batch = random_batch(schema, B, seed=0)
    model = zoo.build("dcnv2", schema, dnn_hidden_units=(8,), cross_num=L)
    N = 13 + 26 * 4
    _, flops = step_floor(model, batch, None)
    assert flops >= 6 * B * N * N * L
