"""Learning: does each architecture learn the signal it is built for? (``python -m bench learning``)

Two tables, every model trained through ``rankops.train.loop.Trainer``:

* **Planted data** (``rankops.data.synthetic``): one set per kind of signal, the models of its
  comparison, test AUC over seeds beside the planted model's own AUC on the same test rows (the
  ceiling). Each set plants a signal the baseline cannot hold (see each generator's docstring):
  pairwise interactions (FM, DeepFM vs LR), third-order crosses (DCN-V2, xDeepFM vs DNN),
  target-to-sequence affinity (DIN, BST vs a DNN over the mean-pooled sequence), two tasks with
  conflicting signals (MMoE, PLE vs a shared bottom of the experts' width, on
  ``synthetic_mtl.make_sinusoid_tasks``, the MMoE paper's synthetic; ``multitask_rho1``: the same
  with task correlation 1, the control), a CTR -> CVR funnel (ESMM's pCVR vs a CVR model
  trained on clicked impressions only; both judged on every test impression against the
  counterfactual conversion label). Then the best setups (``crosses_best``, ``multitask_best``,
  ``funnel_best``): the best model of a kind with the rows (and, for the conflicting tasks, the
  expert width) it needs to come within 0.01 of the ceiling.
* **UCI Adult** (``rankops.data.adult``): DeepFM, DCN-V2, xDeepFM on income; shared bottom, MMoE,
  PLE on income + never-married, with the peers' setup (80/20 split, embedding dim 8, DNN 256-128,
  5 epochs, batch 256, Adam 1e-3); the seed draws both the split and the initialisation.

Written to ``bench/results/learning-<device tag>.{md,csv,png}`` (+ ``-runs.csv``, one row per run).
``--quick``: a smoke run (one seed, a tenth of the planted samples, 2 epochs; Adult income, 1 epoch;
written under bench/results/tmp/). ``--cases table=planted set=crosses seed=0`` runs a part.
"""

from __future__ import annotations

import csv
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import rankops.models as zoo
from rankops.data import synthetic as S
from rankops.data import synthetic_mtl as MTL
from rankops.train.loop import TrainConfig, Trainer
from rankops.train.metrics import auc

OWN_RESULTS = True  # bench/__main__.py: run() writes its own tables (not Bench's timing report)
SEEDS = (0, 1, 2)


@dataclass
class Model:
    label: str  # the row's name
    name: str  # rankops.models name
    config: dict = field(default_factory=dict)  # overrides passed to build()
    clicked_only: bool = False  # funnel baseline: train on clicked impressions, task cvr


@dataclass
class PlantedSet:
    kind: str  # the signal
    make: callable
    num_samples: int
    epochs: int
    lr: float
    models: list[Model]
    baseline: str | None  # label of the model the others must beat (None: a best-setup set, below)
    tasks: tuple[str, ...] = ("click",)  # the AUCs reported (funnel: "cvr")
    batch_size: int = 512
    lr_schedule: str = "constant"  # TrainConfig.lr_schedule
    best_of: str | None = None  # a best-setup set: the best model of that set's kind, given the data and
    # the training it needs to near the ceiling (the comparison sets hold the architectures' widths equal)


W = (16, 8)  # the conflicting-tasks set: one width for the shared bottom and every expert
_MULTITASK = [Model("shared_bottom", "shared_bottom", {"dnn_hidden_units": W}),
              Model("mmoe", "mmoe", {"expert_hidden_units": W}),
              Model("ple", "ple", {"expert_hidden_units": W}),
              # diagnostic: a shared bottom as wide as MMoE's 4 experts together (about MMoE's parameters)
              Model("shared_bottom (64, 8)*", "shared_bottom", {"dnn_hidden_units": (64, 8)})]
PLANTED = [
    PlantedSet("pairwise", S.make_pairwise, 200_000, 4, 3e-3,
               [Model("lr", "lr"), Model("fm", "fm"), Model("deepfm", "deepfm")], "lr"),
    PlantedSet("crosses", S.make_crosses, 200_000, 6, 1e-2,
               [Model("dnn", "dnn"), Model("dcnv2", "dcnv2"),
                Model("xdeepfm", "xdeepfm", {"cin_layer_size": (32, 32)}),
                # diagnostic: DeepCTR-Torch's CIN, a ReLU after every layer (the zoo's is the paper's: linear)
                Model("xdeepfm, CIN ReLU*", "xdeepfm", {"cin_layer_size": (32, 32), "cin_activation": "relu"})], "dnn"),
    PlantedSet("sequence", S.make_sequence, 100_000, 8, 1e-2,
               [Model("dnn (mean-pooled)", "dnn"), Model("din", "din"),
                Model("bst", "bst", {"transformer_dropout": 0.0})], "dnn (mean-pooled)"),
    PlantedSet("multitask", MTL.make_sinusoid_tasks, 100_000, 5, 1e-2, _MULTITASK, "shared_bottom", tasks=("a", "b")),
    # the control: the same set with task correlation 1 (no conflict), where the gap should close
    PlantedSet("multitask_rho1", functools.partial(MTL.make_sinusoid_tasks, task_correlation=1.0), 100_000, 5, 1e-2,
               _MULTITASK[:2], "shared_bottom", tasks=("a", "b")),
    PlantedSet("funnel", S.make_funnel, 200_000, 4, 3e-3,
               [Model("dnn (clicked only)", "dnn", clicked_only=True), Model("esmm", "esmm")],
               "dnn (clicked only)", tasks=("cvr", "click")),
    # the best setups: what the best model of a kind needs to come within 0.01 of the ceiling. More rows
    # than the sets above (DCN-V2 over-fits 200k before it has learned the crosses; ESMM sees ~30 clicks an
    # item there) and, for the conflicting tasks, wider experts (twelve ridge functions do not fit (16, 8));
    # crosses_best is `rankops train`'s built-in data and setup (scripts/run.sh)
    PlantedSet("crosses_best", S.make_crosses, 400_000, 10, 1e-2, [Model("dcnv2", "dcnv2")], None,
               lr_schedule="cosine", best_of="crosses"),
    PlantedSet("multitask_best", MTL.make_sinusoid_tasks, 1_000_000, 10, 1e-2,
               [Model("mmoe (128, 64)", "mmoe", {"expert_hidden_units": (128, 64)}),
                Model("ple (128, 64)", "ple", {"expert_hidden_units": (128, 64)})], None, tasks=("a", "b"),
               lr_schedule="cosine", best_of="multitask"),
    # (the clicked-only CVR model for comparison: with 2000 impressions an item it is no longer starved of clicks)
    PlantedSet("funnel_best", S.make_funnel, 2_000_000, 4, 3e-3,
               [Model("esmm", "esmm"), Model("dnn (clicked only)", "dnn", clicked_only=True)], None,
               tasks=("cvr", "click"), best_of="funnel"),
]

ADULT = [  # (tasks, models); the peers' setup
    (("income",), [Model("deepfm", "deepfm"), Model("dcnv2", "dcnv2"), Model("xdeepfm", "xdeepfm")]),
    (("income", "never_married"), [Model("shared_bottom", "shared_bottom"), Model("mmoe", "mmoe"),
                                   Model("ple", "ple")]),
]
ADULT_TARGETS = {("income", m): 0.91 for m in ("deepfm", "dcnv2", "xdeepfm")}
ADULT_TARGETS.update({("never_married", "mmoe"): 0.96, ("never_married", "ple"): 0.96})


def _build(m: Model, schema):
    return zoo.build(m.name, schema, **m.config)


def _trainer(model, epochs: int, lr: float, batch_size: int, seed: int, device: str,
             lr_schedule: str = "constant") -> Trainer:
    torch.manual_seed(seed)
    return Trainer(model, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", seed=seed,
                                      device=device, progress=False, lr_schedule=lr_schedule))


def run_planted(ps: PlantedSet, seed: int, num_samples: int | None = None, epochs: int | None = None,
                device: str = "cpu", models: list[str] | None = None) -> list[dict]:
    """Train the models of ``ps`` on one seed's data; one row per (model, task) with its test AUC
    and the ceiling on the same test rows."""
    data = ps.make(num_samples=num_samples or ps.num_samples, seed=seed)
    train, test = data.split((0.8, 0.2), seed=seed)
    ceil = S.ceiling(test)
    epochs = epochs or ps.epochs
    rows = []
    for m in ps.models:
        if models is not None and m.label not in models:
            continue
        t0 = time.perf_counter()
        if m.clicked_only:
            fit_on, judge_on = S.clicked_only(train), S.impressions_cvr(test)
            model = _build(m, fit_on.schema)
            tr = _trainer(model, epochs, ps.lr, ps.batch_size, seed, device, ps.lr_schedule)
            tr.fit(fit_on)
            aucs = {"cvr": tr.evaluate(judge_on)["cvr/auc"]}
        else:
            model = _build(m, data.schema)
            tr = _trainer(model, epochs, ps.lr, ps.batch_size, seed, device, ps.lr_schedule)
            tr.fit(train)
            preds, labels = tr.predict(test)
            names = [t.name for t in data.schema.tasks]
            aucs = {n: auc(preds[:, i], labels[:, i]) for i, n in enumerate(names)}
            if m.name == "esmm":  # predict() gives [pCTR, pCTCVR]; pCVR = pCTCVR / pCTR on every impression
                aucs["cvr"] = auc(preds[:, 1] / preds[:, 0].clamp_min(1e-30), test.extra["label/cvr"])
        seconds = time.perf_counter() - t0
        for task in ps.tasks:
            if task in aucs:
                rows.append(dict(table="planted", set=ps.kind, model=m.label, build=m.name,
                                 overrides=_overrides(m, ps, len(data), epochs), task=task, seed=seed, auc=aucs[task],
                                 ceiling=ceil[task], seconds=seconds, samples=len(train)))
    return rows


def _overrides(m: Model, ps: PlantedSet | None, num_samples: int | None = None, epochs: int | None = None) -> str:
    parts = [f"{k}={v}" for k, v in m.config.items()]
    if m.clicked_only:
        parts.append("trained on clicked impressions")
    if ps is not None:
        schedule = "" if ps.lr_schedule == "constant" else f" {ps.lr_schedule}"
        rows = f"{num_samples // 1000}k rows, " if num_samples else ""
        parts.append(f"{rows}{epochs or ps.epochs} ep, lr {ps.lr:g}{schedule}, batch {ps.batch_size}")
    return "; ".join(parts)


def run_adult(tasks: tuple[str, ...], models: list[Model], seed: int, epochs: int = 5,
              device: str = "cpu") -> list[dict]:
    from rankops.data.adult import load_adult

    schema, train, test = load_adult(tasks, seed=seed)
    rows = []
    for m in models:
        t0 = time.perf_counter()
        model = _build(m, schema)
        tr = _trainer(model, epochs, 1e-3, 256, seed, device)
        tr.fit(train)
        res = tr.evaluate(test)
        for task in tasks:
            rows.append(dict(table="adult", set="+".join(tasks), model=m.label, build=m.name,
                             overrides=_overrides(m, None) or "defaults", task=task, seed=seed,
                             auc=res[f"{task}/auc"], ceiling=float("nan"), seconds=time.perf_counter() - t0,
                             samples=len(train)))
    return rows


# ---------------------------------------------------------------------------------------------
# summary and files


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (table, set, model, task): mean, std (sample, over seeds), the per-seed AUCs,
    the mean ceiling and the gap to it; planted lines also compare with their set's baseline."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["table"], r["set"], r["model"], r["task"]), []).append(r)
    out = []
    for (table, set_, model, task), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        a = torch.tensor([r["auc"] for r in rs], dtype=torch.float64)
        c = torch.tensor([r["ceiling"] for r in rs], dtype=torch.float64)
        line = dict(table=table, set=set_, model=model, task=task, overrides=rs[0]["overrides"], seeds=len(rs),
                    auc_mean=float(a.mean()), auc_std=float(a.std()) if len(rs) > 1 else 0.0,
                    aucs=" ".join(f"{float(x):.4f}" for x in a), ceiling=float(c.mean()),
                    gap=float(c.mean() - a.mean()), seconds=sum(r["seconds"] for r in rs) / len(rs),
                    vs_baseline="", beats_baseline="", target="", met="")
        out.append(line)
    by_key = {(l["table"], l["set"], l["model"], l["task"]): l for l in out}
    baselines = {ps.kind: ps.baseline for ps in PLANTED}
    for line in out:
        if line["table"] == "planted":
            base = by_key.get(("planted", line["set"], baselines[line["set"]], line["task"]))
            if base is not None and base is not line:
                mine = [float(x) for x in line["aucs"].split()]
                theirs = [float(x) for x in base["aucs"].split()]
                line["vs_baseline"] = line["auc_mean"] - base["auc_mean"]
                line["beats_baseline"] = f"{sum(x > y for x, y in zip(mine, theirs))}/{len(mine)} seeds"
        else:
            target = ADULT_TARGETS.get((line["task"], line["model"]))
            if target is not None:
                line["target"] = target
                line["met"] = "yes" if line["auc_mean"] >= target else "no"
    return out


def _pm(line: dict) -> str:
    if line["seeds"] == 1:
        return f"{line['auc_mean']:.4f} (1 seed)"
    return f"{line['auc_mean']:.4f} ± {line['auc_std']:.4f}"


def claims(summary: list[dict]) -> list[str]:
    """What the planted table must show, checked: per set and task, every other model beats the
    baseline (in every seed), and the best model's gap to the ceiling (target <= 0.01)."""
    out = []
    baselines = {ps.kind: ps.baseline for ps in PLANTED}
    groups: dict[tuple, list[dict]] = {}
    for line in summary:
        if line["table"] == "planted":
            groups.setdefault((line["set"], line["task"]), []).append(line)
    best_of = {ps.kind: ps.best_of for ps in PLANTED}
    for (set_, task), lines in groups.items():
        if best_of.get(set_):  # a best-setup set: only its gap to the ceiling
            best = min(lines, key=lambda l: l["gap"])
            out.append(f"- {set_} / {task}: the best setup of {best_of[set_]}: {best['model']} "
                       f"({best['overrides']}), {best['gap']:.4f} below the ceiling "
                       f"(within 0.01: {'yes' if best['gap'] <= 0.01 else 'no'})")
            continue
        others = [l for l in lines if l["model"] != baselines[set_] and l["vs_baseline"] != ""]
        if not others:
            continue
        won = lambda l: l["vs_baseline"] > 0 and l["beats_baseline"].startswith(str(l["seeds"]))  # noqa: E731
        beat = [f"{l['model']} {'yes' if won(l) else 'NO'} ({l['vs_baseline']:+.4f}, {l['beats_baseline']})"
                for l in others]
        best = min(lines, key=lambda l: l["gap"])
        within = "yes" if best["gap"] <= 0.01 else "no"
        best_set = [k for k, v in best_of.items() if v == set_ and any(s == k for s, _ in groups)]
        more = f"; its best setup: {best_set[0]}" if best_set else ""
        out.append(f"- {set_} / {task}: beat {baselines[set_]}: {'; '.join(beat)}. Best: {best['model']}, "
                   f"{best['gap']:.4f} below the ceiling (within 0.01: {within}{more})")
    return out


def write_md(summary: list[dict], path: Path, header: list[tuple[str, str]], seeds: int, quick: bool) -> None:
    L = ["# Learning: planted signals and UCI Adult", ""]
    L += [f"- {what}: {value}" for what, value in header]
    L += [f"- seeds: {seeds} (mean ± sample std over seeds; each seed draws the data, the split and the init)",
          "- every model trained by `rankops.train.loop.Trainer` (Adam), test AUC on held-out rows"]
    if quick:
        L += ["- **quick run**: a smoke subset, not the recorded numbers"]
    L += ["", "## Planted data (`rankops.data.synthetic`)", "",
          "Ceiling: the planted model's own AUC on the same test rows. Gap: ceiling - mean AUC. "
          "vs baseline: mean AUC - the baseline's (first row of each set), and in how many seeds it was higher.",
          "", "| set | task | model | overrides; training | test AUC | ceiling | gap | vs baseline | s/run |",
          "|---|---|---|---|---|---|---|---|---|"]
    baselines = {ps.kind: ps.baseline for ps in PLANTED}
    for line in summary:
        if line["table"] != "planted":
            continue
        if line["vs_baseline"] != "":
            vs = f"{line['vs_baseline']:+.4f} ({line['beats_baseline']})"
        else:
            vs = "baseline" if line["model"] == baselines.get(line["set"]) else "-"
        L.append(f"| {line['set']} | {line['task']} | {line['model']} | {line['overrides'] or '-'} | {_pm(line)} | "
                 f"{line['ceiling']:.4f} | {line['gap']:.4f} | {vs} | {line['seconds']:.0f} |")
    L += ["", "Checked:", ""] + claims(summary)
    if any("CIN ReLU*" in l["model"] for l in summary):
        L += ["", "\\* diagnostic row: xDeepFM with DeepCTR-Torch's CIN, a ReLU after every layer (`cin_activation="
              "\"relu\"`); the zoo's default is the paper's linear CIN (its official code's and FuxiCTR's)."]
    if any(l["set"].startswith("multitask") for l in summary):
        L += ["", "\\* diagnostic row (multitask sets): a shared bottom of (64, 8), about the parameters of MMoE's 4 "
              "experts of (16, 8) together (shared_bottom (16, 8) 2.5k parameters, MMoE 5.7k, PLE 5.6k, this "
              "5.3k); the comparison the claim is about is at equal width. multitask_rho1 is the control: "
              "the same set with task correlation 1 (no conflict)."]
    best_sets = {ps.kind: ps.best_of for ps in PLANTED if ps.best_of}
    if any(l["set"] in best_sets for l in summary):
        L += ["", "Best-setup sets (" + ", ".join(best_sets) + "): the best model of a kind with the rows and "
              "training it needs to near the ceiling (more rows than the comparison sets have); judged by their gap "
              "alone, the comparison being the other sets'. "
              "multitask_best's experts are (128, 64) wide, where the comparison holds every width at (16, 8)."]
    L += ["", "## UCI Adult (`rankops.data.adult`)", "",
          "80/20 random split, 7 categorical (6 with never_married as a task) + 6 standardised numeric features, "
          "embedding dim 8, DNN / experts 256-128, towers 64, 5 epochs, batch 256, Adam 1e-3. Peers (DeepCTR-Torch, "
          "FuxiCTR, same setup): income 0.912-0.915, never-married 0.963.", "",
          "| tasks | task | model | test AUC | target | met | s/run |", "|---|---|---|---|---|---|---|"]
    for line in summary:
        if line["table"] != "adult":
            continue
        target = f"{line['target']:.2f}" if line["target"] != "" else "-"
        L.append(f"| {line['set']} | {line['task']} | {line['model']} | {_pm(line)} | {target} | "
                 f"{line['met'] or '-'} | {line['seconds']:.0f} |")
    path.write_text("\n".join(L) + "\n")


def write_csv(rows: list[dict], summary: list[dict], path: Path) -> None:
    keys = list(summary[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys + ["per_seed"])
        w.writeheader()
        for line in summary:
            w.writerow({**line, "per_seed": ""})
    raw = path.with_name(path.stem + "-runs.csv")
    with open(raw, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_png(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[dict]] = {}
    for line in summary:
        panels.setdefault((line["table"], line["set"], line["task"]), []).append(line)
    n = len(panels)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, ((table, set_, task), lines) in zip(axes.flat, panels.items()):
        means = [l["auc_mean"] for l in lines]
        stds = [l["auc_std"] for l in lines]
        labels = [l["model"].replace(" (", "\n(").replace(", ", ",\n") for l in lines]
        ax.bar(range(len(lines)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
        lo = min(means) - 0.03
        ceiling = lines[0]["ceiling"]
        if not math.isnan(ceiling):
            ax.axhline(ceiling, color="tab:red", ls="--", lw=1, label=f"ceiling {ceiling:.3f}")
            ax.legend(loc="lower right", fontsize=7)
            hi = ceiling + 0.01
        else:
            hi = max(means) + 0.01
        ax.set_ylim(lo, hi)
        ax.set_xticks(range(len(lines)), labels, fontsize=7)
        ax.set_title(f"{'planted' if table == 'planted' else 'Adult'}: {set_} / {task}", fontsize=9)
        ax.set_ylabel("test AUC", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def run(bench, args) -> dict[str, Path]:
    quick = bool(getattr(args, "quick", False))
    device = getattr(args, "device", "cpu")
    seeds = SEEDS[:1] if quick else SEEDS
    rows: list[dict] = []
    t0 = time.perf_counter()
    for ps in PLANTED:
        for seed in seeds:
            if not bench.wants(table="planted", set=ps.kind, seed=seed):
                continue
            n = ps.num_samples // 10 if quick else None
            new = run_planted(ps, seed, num_samples=n, epochs=2 if quick else None, device=device)
            rows += new
            _checkpoint(bench, rows)
            print(f"[learning] {ps.kind} seed {seed}: " + ", ".join(f"{r['model']}/{r['task']} {r['auc']:.4f}"
                                                                    for r in new)
                  + f" (ceiling {new[0]['ceiling']:.4f}; {time.perf_counter() - t0:.0f} s)", flush=True)
    for tasks, models in ADULT:
        for seed in seeds:
            if not bench.wants(table="adult", set="+".join(tasks), seed=seed) or (quick and len(tasks) > 1):
                continue
            new = run_adult(tasks, models, seed, epochs=1 if quick else 5, device=device)
            rows += new
            _checkpoint(bench, rows)
            print(f"[learning] adult {'+'.join(tasks)} seed {seed}: "
                  + ", ".join(f"{r['model']}/{r['task']} {r['auc']:.4f}" for r in new)
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    bench.rows = rows  # what bench/__main__.py counts
    return save(bench, rows, quick, f"{time.perf_counter() - t0:.0f} s")


def _checkpoint(bench, rows: list[dict]) -> None:
    """The runs so far, to ``<out_dir>/<name>-<tag>-partial-runs.csv`` (a long run killed midway keeps them)."""
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    with open(bench.out_dir / f"{bench.name}-{bench.tag}-partial-runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def save(bench, rows: list[dict], quick: bool = False, wall: str | None = None,
         extra_header: list[tuple[str, str]] = ()) -> dict[str, Path]:
    """Write ``<out_dir>/<name>-<tag>.{md,csv,png}`` (and the per-run ``-runs.csv``) from ``rows``."""
    summary = summarise(rows)
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    stem = bench.out_dir / f"{bench.name}-{bench.tag}"
    paths = {"md": stem.with_suffix(".md"), "csv": stem.with_suffix(".csv"), "png": stem.with_suffix(".png")}
    header = [h for h in bench.header() if h[0] != "memory bandwidth"]
    if wall:
        header.append(("wall time", wall))
    header += list(extra_header)
    write_md(summary, paths["md"], header, max(l["seeds"] for l in summary), quick)
    write_csv(rows, summary, paths["csv"])
    write_png(summary, paths["png"])
    return paths


def read_runs(*paths) -> list[dict]:
    """The rows of ``-runs.csv`` files (parts of one run made in separate processes, e.g. with
    ``--cases table=planted`` and ``--cases table=adult``), numbers parsed back."""
    rows = []
    for path in paths:
        with open(path) as f:
            for r in csv.DictReader(f):
                for k in ("auc", "ceiling", "seconds"):
                    r[k] = float(r[k])
                for k in ("seed", "samples"):
                    r[k] = int(r[k])
                rows.append(r)
    return rows


if __name__ == "__main__":
    # python -m bench.learning --merge A-runs.csv B-runs.csv ... [--note TEXT]: one report from parts
    # run in separate processes (e.g. side by side with --cases table=planted set=crosses)
    import argparse

    from bench.common import Bench

    p = argparse.ArgumentParser(prog="python -m bench.learning")
    p.add_argument("--merge", nargs="+", required=True, metavar="RUNS_CSV")
    p.add_argument("--note", action="append", default=[], help="a header line (e.g. the commands of the parts)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    bench = Bench("learning", "cpu", out_dir=a.out, bandwidth=0.0, progress=False)
    print(save(bench, read_runs(*a.merge), extra_header=[("note", n) for n in a.note]))
