"""What the recipe benchmarks (bench/recipes_mtl.py, bench/recipes_news.py) share: the loop over
recipes and seeds, merging parts run separately into one report, and writing it (md + json).

A recipe benchmark module defines ``RECIPES`` (each with ``name`` and ``primary`` metrics),
``summarise(rows)``, ``claims(summary)`` and ``write_md(summary, path, header, quick)``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Callable


def run_seeds(bench, recipes, seeds, run_one: Callable, tag: str) -> tuple[list[dict], float]:
    """``run_one(recipe, seed) -> rows`` for every recipe and seed ``bench`` wants (``--cases``),
    printing each recipe's primary metrics; returns the rows and the seconds taken."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    for r in recipes:
        for seed in seeds:
            if not bench.wants(recipe=r.name, seed=seed):
                continue
            new = run_one(r, seed)
            rows += new
            shown = ", ".join(f"{x['model']}/{x['metric']} {x['value']:.4f}" for x in new if x["metric"] in r.primary)
            print(f"[{tag}] {r.name} seed {seed}: {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)
    bench.rows = rows
    return rows, time.perf_counter() - t0


def merge_parts(paths, recipes) -> tuple[list[dict], list[dict]]:
    """The runs of the report jsons at ``paths``, each recipe's from the last part that has it, in
    ``recipes``' order; and the parts' headers."""
    by_recipe: dict[str, list[dict]] = {}
    headers = []
    for path in paths:
        part = json.loads(Path(path).read_text())
        headers.append(part["header"])
        runs: dict[str, list[dict]] = {}
        for row in part["runs"]:
            runs.setdefault(row["recipe"], []).append(row)
        by_recipe.update(runs)
    return [r for rec in recipes for r in by_recipe.get(rec.name, [])], headers


def save(module: ModuleType, bench, rows: list[dict], quick: bool, wall: str, replace: dict | None = None,
         extra: list[tuple[str, str]] = ()) -> dict[str, Path]:
    """``module``'s report of ``rows`` under ``bench.out_dir``: the machine header (``replace`` swaps
    values, ``extra`` appends lines), the wall time, the summary table and the claims."""
    summary = module.summarise(rows)
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    stem = bench.out_dir / bench.name
    paths = {"md": stem.with_suffix(".md"), "json": stem.with_suffix(".json")}
    header = [(k, (replace or {}).get(k, v)) for k, v in bench.header() if k != "memory bandwidth"]
    header += [("wall time", wall)] + list(extra)
    module.write_md(summary, paths["md"], header, quick)
    paths["json"].write_text(json.dumps({"header": dict(header), "summary": summary, "runs": rows,
                                         "claims": module.claims(summary)}, indent=1))
    return paths
