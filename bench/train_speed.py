"""End-to-end training speed: ``rankops train`` against DeepCTR-Torch's ``fit()`` on UCI Adult.

    python -m bench.train_speed                       # DeepFM and DCN-V2, 5 epochs, batch 256, 1 thread
    python -m bench.train_speed --threads 2 --epochs 1 --models deepfm

Same data (rankops.data.adult: the 80/20 split, 7 categorical + 6 standardised numeric features,
embedding dim 8), same model sizes (DNN 256-128; DCN-V2: 3 full-rank cross layers beside the DNN,
DeepCTR-Torch's ``DCN(cross_parameterization="matrix", cross_num=3)``), same batch, Adam 1e-3, the
same number of epochs. Each configuration runs in its own process. Measured:

- samples/s: training samples over the seconds of the training epochs alone (rankops: the
  trainer's epoch timer, batch assembly included, evaluation excluded; DeepCTR-Torch: the wall time of
  ``fit()`` without validation data, its own batching included);
- test AUC / logloss after the last epoch.

rankops variants: ``rankops`` (the CLI's defaults: tables in the dense Adam), ``rankops-fused``
(tables trained by row-wise Adagrad fused into the backward, ``--embedding-optimizer rowwise_adagrad``)
and ``rankops-reference`` (``--backend reference``: pure-PyTorch ops, the same loop).

Writes bench/results/train_speed-e2e-<device tag>.{csv,md}. The 2-core CI box is shared: the header
gives the load average, and only ratios from one run mean much.

``python -m bench train_speed`` (the harness, ``run`` below) times the training step alone, the
providers interleaved in rounds so that load bursts hit them alike: 16 steps of B=256 on prepared
Adult batches per call; ``rankops`` = ``Trainer.step`` (the CLI's step), ``rankops-reference`` the
same under ``use_backend("reference")``, ``deepctr`` = the body of DeepCTR-Torch's ``fit()`` loop
(forward, summed BCE + its L2 terms, backward, Adam) on its own input tensor. Batch assembly is
excluded on both sides.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

DEEPCTR = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
import requests
def _offline(*a, **k):
    raise OSError("offline")  # deepctr_torch's import-time version check must not wait on the network
requests.get = _offline
from deepctr_torch.inputs import DenseFeat, SparseFeat
from deepctr_torch.models import DCN, DeepFM
from rankops.data.adult import load_adult
from rankops.train.metrics import auc, logloss
cfg = json.loads(sys.argv[1])
schema, train, test = load_adult(seed=cfg["seed"])
def x(ds):
    d = {f.name: ds.sparse[f.name].numpy() for f in schema.sparse}
    d.update({f.name: ds.dense[:, i].numpy() for i, f in enumerate(schema.dense)})
    return d
cols = [SparseFeat(f.name, f.vocab_size, embedding_dim=f.embedding_dim) for f in schema.sparse]
cols += [DenseFeat(f.name, 1) for f in schema.dense]
torch.manual_seed(cfg["seed"])
if cfg["model"] == "deepfm":
    m = DeepFM(cols, cols, dnn_hidden_units=(256, 128), task="binary", device="cpu")
else:
    m = DCN(cols, cols, cross_num=3, cross_parameterization="matrix", dnn_hidden_units=(256, 128), task="binary",
            device="cpu")
m.compile("adam", "binary_crossentropy")
xt, yt = x(train), train.labels[:, 0].numpy()
t0 = time.perf_counter()
m.fit(xt, yt, batch_size=cfg["batch_size"], epochs=cfg["epochs"], verbose=0)
secs = time.perf_counter() - t0
p = torch.from_numpy(m.predict(x(test), 4096)[:, 0].astype("float64"))
y = test.labels[:, 0]
print("RESULT " + json.dumps({"samples_per_s": cfg["epochs"] * len(train) / secs, "train_seconds": secs,
                              "auc": auc(p, y), "logloss": logloss(p, y)}))
"""


STEPS = 16


def run(bench, args):
    import contextlib

    import numpy as np
    import requests
    import torch

    import rankops
    import rankops.models as zoo
    from rankops.data.adult import load_adult
    from rankops.train.loop import Trainer, TrainConfig

    def _offline(*a, **k):
        raise OSError("offline")

    requests.get = _offline  # deepctr_torch's import-time version check
    try:
        from deepctr_torch.inputs import DenseFeat, SparseFeat
        from deepctr_torch.models import DCN, DeepFM
    except ImportError:
        DeepFM = None
        bench.note("deepctr-torch is not installed (pip install --no-deps deepctr-torch): rankops rows only")

    schema, train, _ = load_adult()
    B = 256
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    rows = [perm[i * B:(i + 1) * B] for i in range(STEPS)]
    batches = [train.take(r) for r in rows]
    bench.baselines = ("deepctr",) if DeepFM is not None else ()
    bench.note(f"UCI Adult, {STEPS} training steps of B={B} per call; DNN 256-128, D=8; Adam 1e-3; "
               f"{torch.get_num_threads()} torch threads")
    if DeepFM is not None:
        cols = [SparseFeat(f.name, f.vocab_size, embedding_dim=f.embedding_dim) for f in schema.sparse]
        cols += [DenseFeat(f.name, 1) for f in schema.dense]
    for case in bench.grid(model=["deepfm", "dcnv2"]):
        name = case["model"]
        extra = {"cross_num": 3} if name == "dcnv2" else {}
        providers = {}
        for variant, backend in (("rankops", None), ("rankops-reference", "reference")):
            torch.manual_seed(0)
            m = zoo.build(name, schema, dnn_hidden_units=(256, 128), **extra)
            tr = Trainer(m, TrainConfig(batch_size=B, lr=1e-3, progress=False))

            def step(tr=tr, backend=backend):
                with rankops.use_backend(backend) if backend else contextlib.nullcontext():
                    for b in batches:
                        tr.step(b)

            providers[variant] = step
        if DeepFM is None:
            bench.run(op="train_step", case=dict(model=name, B=B, steps=STEPS), providers=providers, inputs=(),
                      mode="step")
            continue
        torch.manual_seed(0)
        if name == "deepfm":
            dm = DeepFM(cols, cols, dnn_hidden_units=(256, 128), task="binary", device="cpu")
        else:
            dm = DCN(cols, cols, cross_num=3, cross_parameterization="matrix", dnn_hidden_units=(256, 128),
                     task="binary", device="cpu")
        dm.compile("adam", "binary_crossentropy")
        xs = []
        for r in rows:  # DeepCTR-Torch's input: one float tensor, its feature_index columns, same rows
            feats = {f.name: train.sparse[f.name][r].double().numpy() for f in schema.sparse}
            feats.update({f.name: train.dense[r, i].double().numpy() for i, f in enumerate(schema.dense)})
            x = np.stack([feats[k] for k in dm.feature_index], 1)
            xs.append((torch.from_numpy(x).float(), train.labels[r, 0].clone()))
        optim, loss_func = dm.optim, dm.loss_func

        def deepctr_step(dm=dm, optim=optim, loss_func=loss_func):
            dm.train()
            for x, y in xs:
                y_pred = dm(x).squeeze(-1)
                optim.zero_grad()
                loss = loss_func(y_pred, y, reduction="sum")
                total = loss + dm.get_regularization_loss() + dm.aux_loss
                total.backward()
                optim.step()

        providers["deepctr"] = deepctr_step
        bench.run(op="train_step", case=dict(model=name, B=B, steps=STEPS), providers=providers, inputs=(),
                  mode="step")


def rankops_run(model: str, variant: str, args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "rankops", "train", "--model", model, "--data", "adult", "--epochs",
               str(args.epochs), "--batch-size", str(args.batch_size), "--lr", "1e-3", "--seed", str(args.seed),
               "--threads", str(args.threads), "--out", d, "--no-progress",
               "--model-config", json.dumps({"dnn_hidden_units": [256, 128]} |
                                            ({"cross_num": 3} if model == "dcnv2" else {}))]
        if variant == "rankops-fused":
            cmd += ["--embedding-optimizer", "rowwise_adagrad", "--embedding-lr", "0.05"]
        if variant == "rankops-reference":
            cmd += ["--backend", "reference"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if r.returncode:
            return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:200]}
        m = json.loads((Path(d) / "metrics.json").read_text())
    return {"samples_per_s": m["samples"] / m["train_seconds"], "train_seconds": m["train_seconds"],
            "auc": m["valid"]["income/auc"], "logloss": m["valid"]["income/logloss"]}


def deepctr_run(model: str, args) -> dict:
    cfg = {"model": model, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed}
    r = subprocess.run([sys.executable, "-c", DEEPCTR, json.dumps(cfg), str(args.threads)], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode or line is None:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:200] if (r.stderr or r.stdout) else "failed"}
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    p.add_argument("--variants", nargs="+", default=["rankops", "rankops-fused", "rankops-reference", "deepctr"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration, interleaved; the fastest is kept")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    from bench.common import device_tag

    import torch

    tag = device_tag(torch.device("cpu"))
    started = dt.datetime.now().astimezone()
    load0 = os.getloadavg()[0]
    best: dict[tuple[str, str], dict] = {}
    for rep in range(args.repeat):  # interleaved: a burst of load on the shared box hits every provider alike
        for model in args.models:
            for variant in args.variants:
                t0 = time.perf_counter()
                res = deepctr_run(model, args) if variant == "deepctr" else rankops_run(model, variant, args)
                row = {"model": model, "provider": variant, "epochs": args.epochs, "batch_size": args.batch_size,
                       "threads": args.threads, **res, "wall_s": time.perf_counter() - t0, "load": os.getloadavg()[0],
                       "runs": rep + 1}
                old = best.get((model, variant))
                if old is None or ("error" not in res and res["samples_per_s"] > old.get("samples_per_s", -1)):
                    best[(model, variant)] = row
                else:
                    old["runs"] = rep + 1
                shown = (f"{res['samples_per_s']:,.0f} samples/s, AUC {res['auc']:.4f}" if "error" not in res
                         else f"error: {res['error']}")
                print(f"[train_speed] run {rep + 1}: {model} {variant}: {shown}", flush=True)
    rows = list(best.values())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"train_speed-e2e-{tag}" + ("" if args.threads == 1 else f"-t{args.threads}")
    keys = ["model", "provider", "epochs", "batch_size", "threads", "runs", "samples_per_s", "train_seconds", "auc",
            "logloss", "wall_s", "load", "error"]
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
    md = [f"# train_speed on {tag}", "",
          f"- date: {started:%Y-%m-%d %H:%M %Z}; torch {torch.__version__}; {args.threads} torch thread(s); "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end ({os.cpu_count()} cores)",
          f"- command: `python -m bench.train_speed {' '.join(argv if argv is not None else sys.argv[1:])}`",
          f"- UCI Adult (rankops.data.adult, 80/20 split seed {args.seed}), {args.epochs} epochs, batch "
          f"{args.batch_size}, Adam 1e-3, DNN 256-128 (DCN-V2: 3 full-rank cross layers, parallel)",
          "- samples/s = training samples / seconds of the training epochs (no evaluation), the fastest of "
          f"{args.repeat} interleaved runs; AUC on the test split (of that run)",
          "", "| model | provider | samples/s | vs deepctr | test AUC | logloss | train s |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for model in args.models:
        ref = next((r for r in rows if r["model"] == model and r["provider"] == "deepctr" and "error" not in r), None)
        for r in (r for r in rows if r["model"] == model):
            if "error" in r:
                md.append(f"| {model} | {r['provider']} | error: {r['error']} | | | | |")
                continue
            ratio = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-"
            md.append(f"| {model} | {r['provider']} | {r['samples_per_s']:,.0f} | {ratio} | {r['auc']:.4f} | "
                      f"{r['logloss']:.4f} | {r['train_seconds']:.1f} |")
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print(f"[train_speed] -> {out / name}.csv, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
