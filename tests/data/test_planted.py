"""The planted data sets of rankops.data.synthetic: deterministic, well-formed, with a ceiling above
chance, and the planted signal is what lifts it (remove it and the ceiling drops)."""

import pytest
import torch

from rankops.data import synthetic as S
from rankops.train.metrics import auc

N = 20_000
KINDS = sorted(S.PLANTED)


def make(kind, **kw):
    return S.PLANTED[kind](num_samples=kw.pop("num_samples", N), **kw)


@pytest.fixture(scope="module")
def sets():
    return {k: make(k, seed=1) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed(kind, sets):
    a, b, c = sets[kind], make(kind, seed=1), make(kind, seed=2)
    assert torch.equal(a.labels, b.labels)
    for name in a.sparse:
        assert torch.equal(a.sparse[name], b.sparse[name])
    for k in a.extra:
        assert torch.equal(a.extra[k], b.extra[k])
    assert not torch.equal(a.labels, c.labels)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_vocabularies(kind, sets):
    d = sets[kind]
    assert len(d) == N and d.labels.shape == (N, d.schema.num_tasks)
    assert set(d.labels.unique().tolist()) <= {0.0, 1.0}
    for f in d.schema.sparse:
        ids = d.sparse[f.name]
        assert ids.shape == (N,) and ids.dtype == torch.int64
        assert int(ids.min()) >= 0 and int(ids.max()) < f.vocab_size
    for s in d.schema.sequences:
        ids, lengths = d.sequences[s.name]
        assert ids.shape == (N, s.max_len) and lengths.shape == (N,)
        assert int(lengths.min()) >= 1 and int(lengths.max()) <= s.max_len
    for t in d.schema.tasks:
        p = d.extra[f"prob/{t.name}"]
        assert p.shape == (N,) and bool(((p > 0) & (p < 1)).all())
    d.take(torch.arange(256)).validate(d.schema)  # a batch of it fits its own schema


@pytest.mark.parametrize("kind", KINDS)
def test_ceiling_above_chance(kind, sets):
    c = S.ceiling(sets[kind])
    assert set(c) >= {t.name for t in sets[kind].schema.tasks}
    assert all(v > 0.7 for v in c.values()), c


def _ceiling_drop(kind, task="click", **off):
    with_signal = make(kind, seed=3)
    without = make(kind, seed=3, **off)  # same ids and label noise, the signal scaled to 0
    y = with_signal.labels[:, [t.name for t in with_signal.schema.tasks].index(task)]
    return auc(with_signal.extra[f"prob/{task}"], y) - auc(without.extra[f"prob/{task}"], y)


def test_pairwise_signal_is_the_interactions():
    assert _ceiling_drop("pairwise", interaction_scale=0.0) > 0.1


def _explained_by_groups(x: torch.Tensor, group: torch.Tensor) -> float:
    """In-sample R^2 of ``x`` by the means of its groups."""
    n = int(group.max()) + 1
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, group, x)
    counts = torch.zeros(n, dtype=torch.float64).index_add_(0, group, torch.ones_like(x))
    fitted = (sums / counts.clamp(min=1))[group]
    return float(1 - (x - fitted).var() / x.var())


def test_crosses_are_third_order_only():
    assert _ceiling_drop("crosses", cross_scale=0.0) > 0.1
    d, flat = make("crosses", seed=3, num_samples=50_000), make("crosses", seed=3, num_samples=50_000, cross_scale=0.0)
    logit = lambda p: torch.logit(p.double(), eps=1e-6)  # noqa: E731
    triple = logit(d.extra["prob/click"]) - logit(flat.extra["prob/click"])
    V = d.schema.sparse[0].vocab_size
    # no part of the third-order term is a function of one field or of a pair of fields (what LR,
    # FM and pairwise models hold): group means by (f0, f1) explain only their own noise (~400/50k)
    assert _explained_by_groups(triple, d.sparse["f0"]) < 0.01
    assert _explained_by_groups(triple, d.sparse["f0"] * V + d.sparse["f1"]) < 0.02


def test_sequence_signal_is_the_candidates_history():
    assert _ceiling_drop("sequence", affinity_scale=0.0) > 0.1
    d, flat = make("sequence", seed=3), make("sequence", seed=3, affinity_scale=0.0)
    none = d.extra["matches"] == 0
    assert 0.1 < float(none.float().mean()) < 0.9
    # without a history event of the candidate's category the click rate is the flat model's
    assert torch.allclose(d.extra["prob/click"][none], flat.extra["prob/click"][none])
    # pairing each history with another sample's candidate changes the planted probability
    other = S.make_sequence(num_samples=N, seed=3)
    assert not torch.allclose(other.extra["prob/click"][~none], flat.extra["prob/click"][~none])


def test_multitask_signals_are_unrelated():
    d = make("multitask", seed=3, num_samples=50_000)
    la, lb = (torch.logit(d.extra[f"prob/{t}"].double()) for t in ("a", "b"))
    assert abs(float(torch.corrcoef(torch.stack([la, lb]))[0, 1])) < 0.1
    # a task's labels are not ranked by the other task's planted probability
    assert abs(auc(d.extra["prob/b"], d.labels[:, 0]) - 0.5) < 0.05
    # each task's signal is its own: the planted probability of a ranks a's labels, not b's
    assert auc(d.extra["prob/a"], d.labels[:, 0]) > 0.8 > auc(d.extra["prob/a"], d.labels[:, 1]) + 0.25


def test_funnel_conversion_only_after_click():
    d = make("funnel", seed=3, num_samples=50_000)
    click, ctcvr = d.labels[:, 0], d.labels[:, 1]
    assert bool((ctcvr <= click).all()) and torch.equal(ctcvr, click * d.extra["label/cvr"])
    assert 0.05 < float(click.mean()) < 0.3
    # selection bias: clicked impressions convert more often than impressions do
    clicked = click > 0
    assert float(d.extra["prob/cvr"][clicked].mean()) > float(d.extra["prob/cvr"].mean()) + 0.02
    c = S.clicked_only(d)
    assert len(c) == int(clicked.sum()) and [t.name for t in c.schema.tasks] == ["cvr"]
    assert torch.equal(c.labels[:, 0], d.extra["label/cvr"][clicked])
    e = S.impressions_cvr(d)
    assert len(e) == len(d) and torch.equal(e.labels[:, 0], d.extra["label/cvr"])
    assert set(S.ceiling(d)) == {"click", "ctcvr", "cvr"}


@pytest.mark.parametrize("kind, bad", [("pairwise", dict(num_fields=1)), ("crosses", dict(num_fields=2)),
                                       ("sequence", dict(min_len=5, max_len=3)),
                                       ("multitask", dict(task_correlation=2.0)), ("funnel", dict(num_items=1))])
def test_bad_arguments(kind, bad):
    with pytest.raises(ValueError):
        make(kind, **bad)
