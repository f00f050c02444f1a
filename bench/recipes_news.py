"""The news and session recipes on their planted data (``python -m bench recipes_news``).

For each recipe (mtrec, m2trec, plm_nr): the recipe as its YAML configures it
(``models/recipes/<name>.yaml``: planted set, data_config, epochs, lr, batch size, model_config) and
the same model without the one component issue 13 names (mtrec without its auxiliary task, m2trec
without metadata, plm_nr with mean pooling), trained through ``rankops.train.loop.Trainer`` (via
``bench.learning._trainer``) on the same 80/20 split per seed (the seed draws the data, the split
and the initialisation). Test AUC per task, mean ± sample std over 3 seeds, beside the planted
model's own AUC on the same rows (the ceiling); m2trec's also on the cold and the warm candidates.

Written to ``bench/results/recipes_news.{md,json}``; ``--quick``: one seed, a fifth of the samples,
one epoch, under bench/results/tmp/. ``--cases recipe=plm_nr seed=0`` runs a part.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

import rankops.models as zoo
from rankops.data import planted
from rankops.models import recipes
from rankops.train.metrics import auc

from bench import recipe_runs
from bench.learning import _trainer

OWN_RESULTS = True  # bench/__main__.py: run() writes its own tables
SEEDS = (0, 1, 2)


@dataclass
class Case:
    label: str
    config: dict = field(default_factory=dict)  # overrides of the recipe YAML's model_config


@dataclass
class Recipe:
    name: str
    effect: str
    cases: list[Case]  # the first is the recipe as configured, the others its comparisons
    primary: list[str]  # the metrics the claim is about


RECIPES = [
    Recipe("mtrec", "clicks follow the categories of the user's clicked titles; few samples per title word (30 "
                    "topic words per category, half of a title's tokens): the category label (auxiliary task) teaches "
                    "the title encoder what clicks alone teach slowly",
           [Case("mtrec (click + auxiliary category task)"), Case("same model, no auxiliary task", {"aux_weight": 0.0})],
           ["click/auc"]),
    Recipe("m2trec", "session clicks follow the categories of the session's items; 30% of candidates come from a "
                     "cold tail of 19,400 ids seen about once: metadata scores them by category",
           [Case("m2trec (ids + category metadata)"), Case("same model, ids only", {"metadata": []})],
           ["click/auc cold", "cart/auc cold"]),
    Recipe("plm_nr", "clicks follow the user's topical history, behind a per-user share (0-90%) of generic news "
                     "everyone reads: attention pooling can ignore the generic clicks, the mean dilutes the user vector",
           [Case("plm_nr (attention pooling)"), Case("same model, mean pooling", {"user_pooling": "mean"})],
           ["click/auc"]),
]


def _yaml(name: str) -> dict:
    return yaml.safe_load(recipes.yaml_path(name).read_text())


def _aucs(preds: torch.Tensor, labels: torch.Tensor, probs: dict, tasks: list[str], rows: torch.Tensor | None,
          suffix: str) -> tuple[dict, dict]:
    got, ceil = {}, {}
    for i, t in enumerate(tasks):
        p, y, q = preds[:, i], labels[:, i], probs[f"prob/{t}"]
        if rows is not None:
            p, y, q = p[rows], y[rows], q[rows]
        got[f"{t}/auc{suffix}"], ceil[f"{t}/auc{suffix}"] = auc(p, y), auc(q, y)
    return got, ceil


def run_recipe(r: Recipe, seed: int, quick: bool = False, device: str = "cpu") -> list[dict]:
    cfg = _yaml(r.name)
    set_name = cfg["data"].partition(":")[2]
    kwargs = dict(cfg.get("data_config") or {})
    if quick:
        kwargs["num_samples"] = max(2000, kwargs.get("num_samples", 20000) // 5)
    data = planted.make(set_name, **kwargs, seed=seed)
    train, test = data.split((0.8, 0.2), seed=seed)
    epochs = 1 if quick else int(cfg["epochs"])
    tasks = [t.name for t in data.schema.tasks]
    rows = []
    for case in r.cases:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = zoo.build(r.name, data.schema, **{**cfg.get("model_config", {}), **case.config})
        trainer = _trainer(model, epochs, float(cfg["lr"]), int(cfg["batch_size"]), seed, device)
        trainer.fit(train)
        preds, labels = trainer.predict(test)
        got, ceil = _aucs(preds, labels, test.extra, tasks, None, "")
        if "cold" in test.extra:
            for rows_, suffix in ((test.extra["cold"], " cold"), (~test.extra["cold"], " warm")):
                g, c = _aucs(preds, labels, test.extra, tasks, rows_, suffix)
                got.update(g)
                ceil.update(c)
        seconds = time.perf_counter() - t0
        for metric, value in got.items():
            rows.append(dict(recipe=r.name, system=recipes.RECIPES[r.name][0], set=set_name, model=case.label,
                             metric=metric, seed=seed, value=value, ceiling=ceil[metric], seconds=seconds,
                             samples=len(train), epochs=epochs, lr=float(cfg["lr"]),
                             batch_size=int(cfg["batch_size"])))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (recipe, model, metric): mean, sample std, the per-seed values, the mean ceiling."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["model"], r["metric"]), []).append(r)
    out = []
    for (recipe, model, metric), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        v = torch.tensor([r["value"] for r in rs], dtype=torch.float64)
        out.append(dict(recipe=recipe, model=model, metric=metric, set=rs[0]["set"], seeds=len(rs),
                        mean=float(v.mean()), std=float(v.std()) if len(rs) > 1 else 0.0, values=v.tolist(),
                        ceiling=sum(r["ceiling"] for r in rs) / len(rs),
                        seconds=sum(r["seconds"] for r in rs) / len(rs), samples=rs[0]["samples"],
                        training=f"{rs[0]['epochs']} ep, lr {rs[0]['lr']:g}, batch {rs[0]['batch_size']}"))
    return out


def claims(summary: list[dict]) -> list[str]:
    """The recipe's row against each comparison on its primary metrics: the mean difference and
    in how many seeds the recipe was better."""
    by = {(l["recipe"], l["model"], l["metric"]): l for l in summary}
    lines = []
    for r in RECIPES:
        for metric in r.primary:
            a = by.get((r.name, r.cases[0].label, metric))
            for base in r.cases[1:]:
                b = by.get((r.name, base.label, metric))
                if a is None or b is None:
                    continue
                wins = sum(x > y for x, y in zip(a["values"], b["values"]))
                ok = wins == len(a["values"]) and a["mean"] > b["mean"]
                lines.append(f"- {r.name} / {metric}: vs {base.label}: {a['mean'] - b['mean']:+.4f}, better in "
                             f"{wins}/{len(a['values'])} seeds ({'yes' if ok else 'NO'})")
    return lines


def write_md(summary: list[dict], path: Path, header: list[tuple[str, str]], quick: bool) -> None:
    L = ["# Recipes: the news and session systems on their planted data", ""]
    L += [f"- {what}: {value}" for what, value in header]
    L += [f"- seeds: {max(l['seeds'] for l in summary)} (mean ± sample std; each seed draws the data, the 80/20 "
          "split and the init); every model trained by `rankops.train.loop.Trainer` (Adam) with its recipe YAML's "
          "epochs, lr and batch size; test AUC on the held-out rows",
          "- planted: the planted model's own AUC on the same test rows (the ceiling)"]
    if quick:
        L += ["- **quick run**: a smoke subset, not the recorded numbers"]
    for r in RECIPES:
        lines = [l for l in summary if l["recipe"] == r.name]
        if not lines:
            continue
        system, paper = recipes.RECIPES[r.name]
        L += ["", f"## {r.name}: {system}", "", f"{paper}. Planted set `{lines[0]['set']}` ({lines[0]['samples']} "
              f"training samples, {lines[0]['training']}): {r.effect}.", "",
              f"The recipe as a run: `rankops train --config models/recipes/{r.name}.yaml`.", "",
              "| model | metric | test AUC | planted | s/run |", "|---|---|---|---|---|"]
        for l in lines:
            pm = f"{l['mean']:.4f}" + (f" ± {l['std']:.4f}" if l["seeds"] > 1 else " (1 seed)")
            L.append(f"| {l['model']} | {l['metric']} | {pm} | {l['ceiling']:.4f} | {l['seconds']:.0f} |")
    L += ["", "Checked (the recipe's row against its comparison, on the metrics its claim is about):", ""]
    L += claims(summary)
    path.write_text("\n".join(L) + "\n")


def run(bench, args) -> dict[str, Path]:
    quick = bool(getattr(args, "quick", False))
    device = getattr(args, "device", "cpu")
    rows, seconds = recipe_runs.run_seeds(bench, RECIPES, SEEDS[:1] if quick else SEEDS,
                                          lambda r, seed: run_recipe(r, seed, quick, device), "recipes_news")
    return recipe_runs.save(sys.modules[__name__], bench, rows, quick,
                            f"{seconds:.0f} s (`python -m bench recipes_news`)")


if __name__ == "__main__":
    # python -m bench.recipes_news --merge A.json B.json: one report from parts run separately (e.g. a
    # re-run of one recipe with --cases recipe=m2trec); each recipe's runs come from the last file with it
    import argparse

    from bench.common import Bench

    p = argparse.ArgumentParser(prog="python -m bench.recipes_news")
    p.add_argument("--merge", nargs="+", required=True, metavar="JSON")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows, headers = recipe_runs.merge_parts(a.merge, RECIPES)
    bench = Bench("recipes_news", "cpu", out_dir=a.out, bandwidth=0.0, progress=False)
    loads = "; ".join(f"part {i + 1}: {h.get('load average', '?')}" for i, h in enumerate(headers))
    print(recipe_runs.save(sys.modules[__name__], bench, rows, False,
                           " + ".join(h.get("wall time", "?") for h in headers)
                           + " (parts merged: python -m bench.recipes_news --merge)", {"load average": loads}))
