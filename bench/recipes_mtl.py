"""The multi-task recipes on their planted data (``python -m bench recipes_mtl``).

For each recipe (youtube, linkedin_feed, csrec, spotify, snapchat_ads, taobao, kuaishou), the
recipe as its YAML configures it (``models/recipes/<name>.yaml``: planted set, data_config,
epochs, lr, batch size, model_config) and the comparison models of issue 13, trained through
``rankops.train.loop.Trainer`` with the same settings on the same 80/20 split, per seed (the seed
draws the data, the split and the initialisation). Test metrics per task, mean ± sample std over 3
seeds, beside the planted model's own AUC on the same test rows (the ceiling); a regression task's
MSE beside its planted noise variance.

Written to ``bench/results/recipes_mtl.{md,json}``; ``--quick``: one seed, a fifth of the samples,
under bench/results/tmp/. ``--cases recipe=youtube seed=0`` runs a part.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

import rankops.models as zoo
from rankops.data import planted
from rankops.data.dataset import InMemoryDataset
from rankops.data.synthetic import ceiling
from rankops.data.synthetic_mtl import without_dense
from rankops.models import recipes
from rankops.train.metrics import auc

from bench import recipe_runs
from bench.learning import _trainer

OWN_RESULTS = True  # bench/__main__.py: run() writes its own tables
SEEDS = (0, 1, 2)


@dataclass
class Case:
    label: str  # the row's name
    build: str  # rankops.models name
    config: dict = field(default_factory=dict)  # build() options (the recipe's: its YAML's model_config)
    view: str = "full"  # the data it reads: full, no_bias (no position / device), no_vectors, task:<name>
    epochs: int | None = None  # when not the YAML's (csrec: its alternating run trains 2x the joint models' epochs)


@dataclass
class Recipe:
    name: str
    effect: str  # what the planted data shows
    cases: list[Case]
    baseline: list[str]  # labels of the rows the recipe must beat
    primary: list[str]  # the metrics (task/metric) the claim is about


W16 = (16, 8)  # the zoo's conflicting-tasks protocol (bench/learning.py): one width for every expert
MMOE = dict(expert_hidden_units=(64, 32), tower_hidden_units=(16,))


def _yaml(name: str) -> dict:
    return yaml.safe_load(recipes.yaml_path(name).read_text())


def _recipe_case(name: str, label: str | None = None, **override) -> Case:
    return Case(label or name, name, {**_yaml(name).get("model_config", {}), **override})


RECIPES = [
    Recipe("youtube", "clicks depend on relevance and on the position a logging policy chose (which a decoy "
                      "feature predicts): the shallow tower absorbs position, the serving logit ranks by relevance",
           [_recipe_case("youtube", "youtube (MMoE + bias tower)"),
            Case("MMoE without the tower", "youtube", {**_yaml("youtube")["model_config"], "bias_features": []},
                 view="no_bias")],
           ["MMoE without the tower"], ["relevance/auc"]),
    Recipe("linkedin_feed", "one latent interest drives a common click, a rare share and a dwell time: the "
                            "multi-task model reads it for the rare task",
           [_recipe_case("linkedin_feed", "linkedin_feed (MMoE, weights 1 / 2 / 0.5)")]
           + [Case(f"single-task dnn ({t})", "dnn", {"dnn_hidden_units": (64, 32)}, view=f"task:{t}")
              for t in ("click", "share", "dwell")],
           ["single-task dnn (click)", "single-task dnn (share)", "single-task dnn (dwell)"],
           ["click/auc", "share/auc", "dwell/mse"]),
    Recipe("csrec", "two tasks read different ridge functions of the same dense features (task correlation 0; "
                    "rankops.data.synthetic_mtl.make_sinusoid_tasks, the MMoE paper's synthetic); csrec's shared "
                    "network (64, 8) trains 10 epochs alternating (5 per task), the others 5 epochs jointly",
           [_recipe_case("csrec", "csrec (sparse sharing, alternating)"),
            Case("csrec, joint updates*", "csrec", {**_yaml("csrec")["model_config"], "alternate_tasks": False},
                 epochs=5),
            Case("shared_bottom (16, 8)", "shared_bottom", {"dnn_hidden_units": W16, "tower_hidden_units": (16,)},
                 epochs=5),
            Case("shared_bottom (64, 8)", "shared_bottom", {"dnn_hidden_units": (64, 8), "tower_hidden_units": (16,)},
                 epochs=5),
            Case("mmoe (4 experts of (16, 8))", "mmoe", {"expert_hidden_units": W16, "tower_hidden_units": (16,)},
                 epochs=5)],
           ["shared_bottom (16, 8)", "shared_bottom (64, 8)", "mmoe (4 experts of (16, 8))"],
           ["a/auc", "b/auc", "mean/auc"]),
    Recipe("spotify", "the precomputed item vectors carry the signal; 5000 items seen ~5 times each",
           [_recipe_case("spotify", "spotify (MMoE + item_vec)"),
            Case("same MMoE without item_vec", "mmoe", MMOE, view="no_vectors")],
           ["same MMoE without item_vec"], ["stream/auc", "save/auc"]),
    Recipe("snapchat_ads", "each task a third-order cross of its own (correlation 0.9), task b rare",
           [_recipe_case("snapchat_ads", "snapchat_ads (DCN-V2 + PLE)"),
            Case("PLE without crosses", "ple", {k: v for k, v in _yaml("snapchat_ads")["model_config"].items()
                                                 if k not in ("cross_num", "interaction_mode")}),
            Case("dcnv2 single-task (a)", "dcnv2", {}, view="task:a"),
            Case("dcnv2 single-task (b)", "dcnv2", {}, view="task:b")],
           ["PLE without crosses", "dcnv2 single-task (a)", "dcnv2 single-task (b)"], ["a/auc", "b/auc"]),
    Recipe("taobao", "click and buy each depend on the history events of the candidate's category",
           [_recipe_case("taobao", "taobao (DIN attention + PLE)"),
            Case("DNN + MMoE, mean-pooled history", "mmoe", MMOE)],
           ["DNN + MMoE, mean-pooled history"], ["click/auc", "buy/auc"]),
    Recipe("kuaishou", "the same set as taobao",
           [_recipe_case("kuaishou", "kuaishou (target attention + MMoE)"),
            Case("DNN + MMoE, mean-pooled history", "mmoe", MMOE)],
           ["DNN + MMoE, mean-pooled history"], ["click/auc", "buy/auc"]),
]


def _view(data: InMemoryDataset, view: str) -> InMemoryDataset:
    if view == "full":
        return data
    if view == "no_bias":
        return InMemoryDataset(data.schema.subset(drop=["position", "device"]), data.dense, data.sparse,
                               data.sequences, data.labels, data.extra)
    if view == "no_vectors":
        return without_dense(data, [f.name for f in data.schema.dense])
    task = view.partition(":")[2]
    i = [t.name for t in data.schema.tasks].index(task)
    return InMemoryDataset(data.schema.subset(tasks=[task]), data.dense, data.sparse, data.sequences,
                           data.labels[:, i:i + 1], data.extra)


def _metrics(preds: torch.Tensor, data: InMemoryDataset) -> dict[str, float]:
    out = {}
    for i, t in enumerate(data.schema.tasks):
        p, y = preds[:, i], data.labels[:, i]
        if t.kind == "binary":
            out[f"{t.name}/auc"] = auc(p, y)
        else:
            out[f"{t.name}/mse"] = float((p.double() - y.double()).square().mean())
    aucs = [v for k, v in out.items() if k.endswith("/auc")]
    if len(aucs) > 1:  # the multi-task summary: a shared bottom under conflict gives up one task or the other
        out["mean/auc"] = sum(aucs) / len(aucs)
    if "label/relevance" in data.extra and data.schema.tasks[0].name == "click":  # youtube: the unbiased truth
        out["relevance/auc"] = auc(preds[:, 0], data.extra["label/relevance"])
    return out


def _floors(test: InMemoryDataset) -> dict[str, float]:
    """The planted model's own score per metric: AUC ceilings, and each regression task's noise MSE."""
    out = {f"{k}/auc": v for k, v in ceiling(test).items()}
    for i, t in enumerate(test.schema.tasks):
        if t.kind == "regression" and f"mean/{t.name}" in test.extra:
            out[f"{t.name}/mse"] = float((test.extra[f"mean/{t.name}"].double() - test.labels[:, i].double())
                                         .square().mean())
    return out


def run_recipe(r: Recipe, seed: int, quick: bool = False, device: str = "cpu", cache: dict | None = None) -> list[dict]:
    cfg = _yaml(r.name)
    set_name = cfg["data"].partition(":")[2]
    kwargs = dict(cfg.get("data_config") or {})
    if quick:
        kwargs["num_samples"] = max(2000, kwargs.get("num_samples", 20000) // 5)
    data = planted.make(set_name, **kwargs, seed=seed)
    train, test = data.split((0.8, 0.2), seed=seed)
    floors = _floors(test)
    rows = []
    for case in r.cases:
        epochs = 1 if quick else case.epochs or int(cfg["epochs"])
        key = (set_name, case.build, json.dumps(case.config, sort_keys=True, default=list), case.view, seed, epochs,
               float(cfg["lr"]), int(cfg["batch_size"]))
        if cache is not None and key in cache:  # taobao and kuaishou share their baseline run
            got, seconds = cache[key]
        else:
            t0 = time.perf_counter()
            tr, te = _view(train, case.view), _view(test, case.view)
            torch.manual_seed(seed)
            model = zoo.build(case.build, tr.schema, **case.config)
            trainer = _trainer(model, epochs, float(cfg["lr"]), int(cfg["batch_size"]), seed, device)
            trainer.fit(tr)
            preds, _ = trainer.predict(te)
            got, seconds = _metrics(preds, te), time.perf_counter() - t0
            if hasattr(getattr(model, "experts", None), "sharing"):  # CSRec: how the learned masks share W
                names = [t.name for t in te.schema.tasks]
                for k, v in model.experts.sharing().items():
                    k = k if not k.startswith("kept/") or k == "kept/all" else f"kept/{names[int(k[5:])]}"
                    got[f"masks/{k}"] = v
            if cache is not None:
                cache[key] = (got, seconds)
        for metric, value in got.items():
            rows.append(dict(recipe=r.name, system=recipes.RECIPES[r.name][0], set=set_name, model=case.label,
                             build=case.build, metric=metric, seed=seed, value=value,
                             floor=floors.get(metric, float("nan")), seconds=seconds, samples=len(train),
                             epochs=epochs, lr=float(cfg["lr"]), batch_size=int(cfg["batch_size"])))
    return rows


# ---------------------------------------------------------------------------------------------
# summary and files


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric.endswith("/mse") else a > b


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (recipe, model, metric): mean, sample std and the per-seed values, the planted
    floor, and for the recipe's own row how it compares with each baseline reading that metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["model"], r["metric"]), []).append(r)
    out = []
    for (recipe, model, metric), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        v = torch.tensor([r["value"] for r in rs], dtype=torch.float64)
        out.append(dict(recipe=recipe, system=rs[0]["system"], set=rs[0]["set"], model=model, metric=metric,
                        seeds=len(rs), mean=float(v.mean()), std=float(v.std()) if len(rs) > 1 else 0.0,
                        values=[float(x) for x in v], floor=rs[0]["floor"] if len(rs) == 1 else
                        float(torch.tensor([r["floor"] for r in rs]).mean()),
                        seconds=sum(r["seconds"] for r in rs) / len(rs), samples=rs[0]["samples"],
                        training=f"{rs[0]['epochs']} ep, lr {rs[0]['lr']:g}, batch {rs[0]['batch_size']}"))
    return out


def claims(summary: list[dict]) -> list[str]:
    """Per recipe and primary metric: the recipe's row against each baseline reading that metric,
    the mean difference and in how many seeds the recipe was better."""
    by = {(l["recipe"], l["model"], l["metric"]): l for l in summary}
    lines = []
    for r in RECIPES:
        mine = r.cases[0].label
        for metric in r.primary:
            a = by.get((r.name, mine, metric))
            if a is None:
                continue
            parts = []
            for base in r.baseline:
                b = by.get((r.name, base, metric))
                if b is None:
                    continue
                wins = sum(_better(metric, x, y) for x, y in zip(a["values"], b["values"]))
                won = wins == len(a["values"]) and _better(metric, a["mean"], b["mean"])
                parts.append(f"vs {base}: {a['mean'] - b['mean']:+.4f}, better in {wins}/{len(a['values'])} seeds "
                             f"({'yes' if won else 'NO'})")
            if parts:
                lines.append(f"- {r.name} / {metric}: " + "; ".join(parts))
    return lines


def _pm(line: dict) -> str:
    if line["seeds"] == 1:
        return f"{line['mean']:.4f} (1 seed)"
    return f"{line['mean']:.4f} ± {line['std']:.4f}"


def write_md(summary: list[dict], path: Path, header: list[tuple[str, str]], quick: bool) -> None:
    L = ["# Recipes: the multi-task systems on their planted data", ""]
    L += [f"- {what}: {value}" for what, value in header]
    L += [f"- seeds: {max(l['seeds'] for l in summary)} (mean ± sample std; each seed draws the data, the 80/20 "
          "split and the init); every model trained by `rankops.train.loop.Trainer` (Adam) with its recipe YAML's "
          "epochs, lr and batch size; test metrics on the held-out rows",
          "- planted: the planted model's own AUC on the same test rows (ceiling), or a regression task's noise MSE "
          "(floor)"]
    if quick:
        L += ["- **quick run**: a smoke subset, not the recorded numbers"]
    for r in RECIPES:
        lines = [l for l in summary if l["recipe"] == r.name]
        if not lines:
            continue
        system, paper = recipes.RECIPES[r.name]
        L += ["", f"## {r.name}: {system}", "", f"{paper}. Planted set `{lines[0]['set']}` "
              f"({lines[0]['samples']} training samples, {lines[0]['training']}): {r.effect}.", "",
              f"The recipe as a run: `rankops train --config models/recipes/{r.name}.yaml` (seed 0; the command "
              "line validates on its own 10% split, so its numbers differ from this table's 80/20 split).", "",
              "| model | metric | test | planted | s/run |", "|---|---|---|---|---|"]
        for l in lines:
            floor = "-" if l["floor"] != l["floor"] else f"{l['floor']:.4f}"
            L.append(f"| {l['model']} | {l['metric']} | {_pm(l)} | {floor} | {l['seconds']:.0f} |")
    L += ["", "Checked (the recipe's row against each comparison, on the metrics its claim is about):", ""]
    L += claims(summary)
    if any("joint updates*" in l["model"] for l in summary):
        L += ["", "\\* ablation: CSRec's masks and contrastive mask with every task in every step's loss."]
    path.write_text("\n".join(L) + "\n")


def run(bench, args) -> dict[str, Path]:
    quick = bool(getattr(args, "quick", False))
    device = getattr(args, "device", "cpu")
    cache: dict = {}
    rows, seconds = recipe_runs.run_seeds(bench, RECIPES, SEEDS[:1] if quick else SEEDS,
                                          lambda r, seed: run_recipe(r, seed, quick, device, cache), "recipes_mtl")
    return recipe_runs.save(sys.modules[__name__], bench, rows, quick, f"{seconds:.0f} s")


if __name__ == "__main__":
    # python -m bench.recipes_mtl --merge A.json B.json ...: one report from parts run separately
    # (e.g. a re-run of one recipe with --cases recipe=csrec); each recipe's runs come from the last
    # file that has it
    import argparse

    from bench.common import Bench

    p = argparse.ArgumentParser(prog="python -m bench.recipes_mtl")
    p.add_argument("--merge", nargs="+", required=True, metavar="JSON")
    p.add_argument("--note", action="append", default=[], help="a header line (e.g. the commands of the parts)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows, headers = recipe_runs.merge_parts(a.merge, RECIPES)
    bench = Bench("recipes_mtl", "cpu", out_dir=a.out, bandwidth=0.0, progress=False)
    wall = " + ".join(h.get("wall time", "?") for h in headers) + " (parts: " + ", ".join(a.merge) + ")"
    print(recipe_runs.save(sys.modules[__name__], bench, rows, False, wall, extra=[("note", n) for n in a.note]))
