"""auto's per-op table (rankops/auto_order.json): ops whose CUDA kernels no GPU has measured keep
Triton first on CUDA; the table is validated; bench.auto_order writes it from a GPU run's csvs."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rankops import backend

ALL = ("reference", "cpp", "cuda", "triton")


def test_unmeasured_cuda_ops_keep_triton_first():
    table = json.load(open(backend.AUTO_ORDER_FILE))
    for op, entry in table["cuda"].items():
        if entry["measured_on"] is None:
            assert entry["order"][0] == "triton", op
            assert backend.AUTO_ORDER_BY_OP[(op, "cuda")][0] == "triton"


@pytest.mark.skipif(bool(backend.why_unavailable("cuda", "cuda") or backend.why_unavailable("triton", "cuda")),
                    reason="needs an extension built with CUDA kernels and triton installed (no GPU needed)")
def test_select_follows_the_table_on_cuda():
    cuda = torch.device("cuda")
    assert backend.select("cross_net", cuda, ALL) == "triton"
    assert backend.select("fm_interaction", cuda, ALL) == "cuda"  # not in the table: AUTO_ORDER's cuda first
    assert backend.select("cross_net", torch.device("cpu"), ALL) == "cpp"  # the table is per device type


def test_table_rejects_unknown_backends(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"cuda": {"cross_net": {"order": ["cutlass"], "measured_on": None}}}))
    with pytest.raises(ValueError, match="unknown backends"):
        backend.load_auto_order(str(bad))
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"_doc": "x", "cuda": {"cross_net": {"order": ["cuda", "triton"], "measured_on": "H"}}}))
    assert backend.load_auto_order(str(good)) == {("cross_net", "cuda"): ("cuda", "triton", "reference")}
    assert backend.measured_on("cross_net", path=str(good)) == "H"


def _csv(path, rows):
    cols = ["run", "device", "op", "case", "provider", "mode", "dtype", "median_ms", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(cols, r)))


def test_bench_auto_order_picks_the_faster_backend_per_op(tmp_path):
    from bench import auto_order

    dev = "cuda-NVIDIA-H200"
    _csv(tmp_path / "cross.csv", [
        ("cross", dev, "cross_layer", "B=65536", "cuda", "fwd", "bf16", "1.0", ""),
        ("cross", dev, "cross_layer", "B=65536", "triton", "fwd", "bf16", "2.0", ""),
        ("cross", dev, "cross_layer", "B=65536", "cuda", "fwd+bwd", "bf16", "3.0", ""),
        ("cross", dev, "cross_layer", "B=65536", "triton", "fwd+bwd", "bf16", "4.0", ""),
        ("cross", dev, "cross_net_v1", "B=65536", "triton", "fwd", "bf16", "1.0", ""),  # no cuda row: unmeasured
    ])
    _csv(tmp_path / "cin.csv", [
        ("cin", dev, "cin", "B=4096", "cuda", "fwd", "bf16", "5.0", ""),
        ("cin", dev, "cin", "B=4096", "triton", "fwd", "bf16", "1.0", ""),
        ("cin", dev, "cin", "B=8192", "cuda", "fwd", "bf16", "", "RuntimeError: boom"),  # failed: ignored
        ("cin", dev, "cin", "B=8192", "triton", "fwd", "bf16", "1.0", ""),
    ])
    out = tmp_path / "auto_order.json"
    out.write_text(open(backend.AUTO_ORDER_FILE).read())
    assert auto_order.main([str(tmp_path / "cross.csv"), str(tmp_path / "cin.csv"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())["cuda"]
    assert got["cross_net"]["order"] == got["cross_layer"]["order"] == ["cuda", "triton"]
    assert got["cross_net"]["measured_on"] == dev and got["cross_net"]["cases"] == 2
    assert got["cin_layer"]["order"] == ["triton", "cuda"] and got["cin_layer"]["cases"] == 1
    assert got["target_attention"]["measured_on"] is None  # not in the csvs: kept as it was
    assert "cross_net_v1" not in got
    orders = backend.load_auto_order(str(out))
    assert orders[("cross_net", "cuda")] == ("cuda", "triton", "reference")


def test_bench_auto_order_without_rival_rows_leaves_the_table(tmp_path, capsys):
    from bench import auto_order

    _csv(tmp_path / "a.csv", [("a", "cuda-X", "cin", "B=1", "triton", "fwd", "fp32", "1.0", "")])
    out = tmp_path / "t.json"
    assert auto_order.main([str(tmp_path / "a.csv"), "--out", str(out)]) == 1
    assert not out.exists() and "table unchanged" in capsys.readouterr().err
    assert auto_order.main([str(tmp_path / "missing.csv"), "--out", str(out)]) == 2


def test_every_op_with_new_cuda_kernels_is_in_the_table():
    """The cross, CIN and attention families' CUDA kernels are unmeasured: each op that lists cuda is
    in the table (Triton first until a GPU run says otherwise), so auto never picks them blind."""
    from rankops.ops import _declare, attention, cin, cross

    table = json.load(open(backend.AUTO_ORDER_FILE))["cuda"]
    for family in (attention, cin, cross):
        for op in (v for v in vars(family).values() if isinstance(v, _declare.Op)):
            if op.impls is not None and "cuda" in op.impls(op.name):
                assert op.name in table, f"{op.name} has a CUDA kernel but no entry in rankops/auto_order.json"
