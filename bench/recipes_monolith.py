"""The monolith recipe on its planted data (``python -m bench recipes_monolith``).

The recipe as its YAML configures it (``models/recipes/monolith.yaml``: ``long_tail``, data_config,
epochs, lr, batch size, model_config) against the hashing trick on the same DeepFM: ``id % rows``
with the same embedding rows, and with rows enough to use the collisionless tables' whole memory
(embedding rows plus the id maps' buffers). Trained through ``rankops.train.loop.Trainer``
(``bench.learning._trainer``) on the same 80/20 split per seed (the seed draws the data, the split
and the initialisation). Per seed: test AUC beside the planted model's own AUC on the same rows,
and the ids that share a row: distinct training ids whose row holds another distinct training id.
A second pair halves the rows: the recipe with ``min_count=2`` (ids seen once stay on the OOV row,
the LRU evicts when full) against the hashing trick with the same half.

Writes ``bench/results/recipes_monolith.{md,json}``; ``--quick``: one seed, a fifth of the samples,
under bench/results/tmp/.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import yaml

import rankops.models as zoo
from rankops.data import planted
from rankops.data.synthetic import ceiling
from rankops.models import recipes
from rankops.nn.hash_embedding import CollisionlessIds
from rankops.train.metrics import auc

from bench.learning import _trainer

OWN_RESULTS = True  # bench/__main__.py: run() writes its own tables
SEEDS = (0, 1, 2)
COMMAND = "rankops train --config models/recipes/monolith.yaml"


def _yaml() -> dict:
    return yaml.safe_load(recipes.yaml_path("monolith").read_text())


def _map_bytes(model) -> int:
    return sum(b.numel() * b.element_size() for b in model.ids.buffers()) if isinstance(model.ids, CollisionlessIds) else 0


def _shared(model, data) -> dict[str, int]:
    """Per remapped feature: distinct ids of ``data`` whose row holds another of its distinct ids."""
    model.eval()
    out = {}
    kjt = data.take(torch.arange(len(data))).sparse
    rows = model.ids(kjt)
    B = len(data)
    for k, name in enumerate(kjt.keys()):
        if name not in model.ids.features:
            continue
        ids, r = kjt.values()[k * B:(k + 1) * B], rows.values()[k * B:(k + 1) * B]
        pairs = torch.unique(torch.stack([r, ids]), dim=1)
        per_row = torch.bincount(pairs[0])
        out[name] = int((per_row[pairs[0]] > 1).sum())
    return out


def _oov(model, data) -> dict[str, int]:
    """Per collisionless feature: distinct training ids left on the OOV row (not admitted or evicted)."""
    if not isinstance(model.ids, CollisionlessIds):
        return {}
    model.eval()
    return {f: int((t.lookup(data.sparse[f].unique()) == 0).sum()) for f, t in model.ids.tables.items()}


def run_seed(cfg: dict, seed: int, num_samples: int) -> list[dict]:
    data = planted.make("long_tail", **{**cfg.get("data_config", {}), "num_samples": num_samples},
                        embedding_dim=cfg["embedding_dim"], seed=seed)
    train, test = data.split((0.8, 0.2), seed=seed)
    ceil = ceiling(test)["click"]
    mc = cfg["model_config"]
    cap = mc["capacity"]
    D, T = cfg["embedding_dim"], 1
    torch.manual_seed(seed)
    probe = zoo.build("monolith", data.schema, **mc)
    # rows the hashing trick gets for the collisionless tables' whole memory: each row holds an
    # embedding (D floats) and a first-order weight (T floats)
    extra_rows = _map_bytes(probe) // (4 * (D + T) * len(cap))
    half = {f: c // 2 for f, c in cap.items()}
    cases = [("monolith (collisionless)", mc),
             ("hashed, same rows (id % rows)", {**mc, "id_map": "modulo"}),
             (f"hashed, same memory (+{extra_rows:,} rows each)",
              {**mc, "id_map": "modulo", "capacity": {f: c + extra_rows for f, c in cap.items()}}),
             # half the rows: admission keeps the ids seen once off the table, eviction makes room
             ("monolith, half the rows, min_count=2", {**mc, "capacity": half, "min_count": 2,
                                                        "slots": 4 * max(cap.values())}),
             ("hashed, half the rows", {**mc, "id_map": "modulo", "capacity": half})]
    rows = []
    for label, config in cases:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = zoo.build("monolith", data.schema, **config)
        tr = _trainer(model, int(cfg["epochs"]), float(cfg["lr"]), int(cfg["batch_size"]), seed, "cpu")
        tr.fit(train)
        preds, labels = tr.predict(test)
        rows.append(dict(model=label, seed=seed, auc=auc(preds[:, 0], labels[:, 0]), ceiling=ceil,
                         shared=_shared(model, train), oov=_oov(model, train),
                         distinct={f: int(train.sparse[f].unique().numel()) for f in cap},
                         rows={f: c + 1 for f, c in config["capacity"].items()},
                         map_MiB=_map_bytes(model) / 2 ** 20, seconds=time.perf_counter() - t0, samples=len(train)))
        print(f"[recipes_monolith] seed {seed} {label}: AUC {rows[-1]['auc']:.4f} (ceiling {ceil:.4f}), "
              f"ids sharing a row {rows[-1]['shared']}, {rows[-1]['seconds']:.0f} s", flush=True)
    return rows


def _pm(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def write(rows: list[dict], cfg: dict, out: Path, wall: float, seeds) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r["model"] for r in rows))
    system, paper = recipes.RECIPES["monolith"]
    first = rows[0]
    dc = cfg.get("data_config", {})
    lines = [f"# Recipe `monolith`: {system}", "", f"{paper}.", "",
             f"Planted effect: raw 64-bit user and item ids (Zipf {dc.get('zipf', 0.9)} over {dc.get('num_users', 4000):,} "
             f"users and {dc.get('num_items', 1000):,} items) each with a "
             "first-order effect and a user x item cross of its own (`rankops.data.synthetic_longtail.make_long_tail`); "
             "a table that gives two ids one row mixes their effects.", "",
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {first['samples']:,} training samples each "
             f"(80/20 split), {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']}, embedding dim "
             f"{cfg['embedding_dim']}, DeepFM (first-order + FM + DNN 64-32) in every row; trained through "
             f"rankops.train.loop.Trainer on one thread. Wall {wall / 60:.1f} min on the shared 2-core CPU. "
             "`python -m bench recipes_monolith`.", "",
             "| model | rows (user, item) | test AUC | ceiling | training ids sharing a row (user, item) | "
             "ids on OOV | id map MiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for label in labels:
        rs = [r for r in rows if r["model"] == label]
        share = ", ".join(f"{statistics.mean(r['shared'][f] for r in rs):,.0f} / "
                          f"{statistics.mean(r['distinct'][f] for r in rs):,.0f}" for f in rs[0]["shared"])
        oov = ", ".join(f"{statistics.mean(r['oov'][f] for r in rs):,.0f}" for f in rs[0]["oov"]) or "-"
        lines.append(f"| {label} | {', '.join(f'{v:,}' for v in rs[0]['rows'].values())} | "
                     f"{_pm([r['auc'] for r in rs])} | {_pm([r['ceiling'] for r in rs])} | {share} | {oov} | "
                     f"{rs[0]['map_MiB']:.2f} |")
    lines += ["", "For the collisionless tables every id that shares a row is on the OOV row (row 0: not admitted, "
                  "or evicted), as the OOV column shows: no two ids share a row of their own.", ""]
    for mine, other in [(labels[0], labels[1]), (labels[0], labels[2]), (labels[3], labels[4])]:
        a = [r["auc"] for r in rows if r["model"] == mine]
        b = [r["auc"] for r in rows if r["model"] == other]
        diff = [x - y for x, y in zip(a, b)]
        lines.append(f"- {mine} - {other}: AUC {_pm(diff)} (per seed: {', '.join(f'{d:+.4f}' for d in diff)})")
    lines += ["", f"Reproduce the recipe alone: `{COMMAND}`."]
    md, js = out / "recipes_monolith.md", out / "recipes_monolith.json"
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps(dict(command=COMMAND, config=cfg, rows=rows, wall_s=wall), indent=1, default=str) + "\n")
    return {"md": md, "json": js}


def run(bench, args) -> dict[str, Path]:
    t0 = time.perf_counter()
    # one thread: on the shared, loaded 2-core machine a DeepFM step at batch 512 took 100 ms on two
    # OpenMP threads and 15 ms on one (the second thread waits for a busy core at every small op)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = _yaml()
    quick = getattr(args, "quick", False)
    seeds = SEEDS[:1] if quick else SEEDS
    n = int(cfg.get("data_config", {}).get("num_samples", 50_000)) // (5 if quick else 1)
    rows = [r for s in seeds for r in run_seed(cfg, s, n)]
    root = Path(__file__).parent / "results"
    out = Path(args.out) if getattr(args, "out", None) else (root / "tmp" if quick else root)
    torch.set_num_threads(threads)
    return write(rows, cfg, out, time.perf_counter() - t0, seeds)
