"""bench/learning.py end to end on one tiny planted comparison: FM beats LR on pairwise
interactions, and the report (md, csv, png) is written."""

import functools

import torch

from bench import learning
from bench.common import Bench
from rankops.data import synthetic as S


def test_tiny_pairwise_comparison(tmp_path):
    torch.set_num_threads(1)
    ps = learning.PlantedSet("pairwise", functools.partial(S.make_pairwise, num_fields=4, vocab_size=10), 20_000,
                             epochs=3, lr=1e-2, models=[learning.Model("lr", "lr"), learning.Model("fm", "fm")],
                             baseline="lr")
    rows = learning.run_planted(ps, seed=0)
    by = {r["model"]: r for r in rows}
    assert set(by) == {"lr", "fm"} and all(r["task"] == "click" for r in rows)
    ceiling = by["fm"]["ceiling"]
    assert by["fm"]["auc"] > by["lr"]["auc"] + 0.05, rows
    assert by["fm"]["auc"] > ceiling - 0.03, rows
    assert by["lr"]["auc"] < ceiling

    paths = learning.save(Bench("learning", "cpu", out_dir=tmp_path, bandwidth=1.0, progress=False), rows)
    md = paths["md"].read_text()
    assert "| pairwise | click | fm |" in md and "baseline" in md
    assert paths["csv"].read_text().count("\n") == 3 and paths["png"].stat().st_size > 0
    again = learning.read_runs(paths["csv"].with_name(paths["csv"].stem + "-runs.csv"))
    assert [r["auc"] for r in again] == [r["auc"] for r in rows]


def _row(set_, model, auc, ceiling, seed):
    return dict(table="planted", set=set_, model=model, build=model, overrides="", task="cvr", seed=seed, auc=auc,
                ceiling=ceiling, seconds=1.0, samples=100)


def test_claims_judge_the_best_setup_by_its_gap_alone():
    rows = [_row("funnel", "dnn (clicked only)", 0.72 + 0.001 * s, 0.766, s) for s in range(3)]
    rows += [_row("funnel", "esmm", 0.75 + 0.001 * s, 0.766, s) for s in range(3)]
    rows += [_row("funnel_best", "esmm", 0.760 + 0.001 * s, 0.768, s) for s in range(3)]
    rows += [_row("funnel_best", "dnn (clicked only)", 0.740, 0.768, s) for s in range(3)]
    lines = learning.claims(learning.summarise(rows))
    compared, best = lines
    assert compared.startswith("- funnel / cvr: beat dnn (clicked only): esmm yes") and "(within 0.01: no; its best " \
        "setup: funnel_best)" in compared, compared
    assert best.startswith("- funnel_best / cvr: the best setup of funnel: esmm") and "0.0070 below" in best \
        and best.endswith("(within 0.01: yes)"), best
    far = learning.claims(learning.summarise([_row("funnel_best", "esmm", 0.75, 0.768, s) for s in range(3)]))
    assert far[0].endswith("(within 0.01: no)"), far
