"""The multi-task recipes (youtube, linkedin_feed, csrec, spotify, snapchat_ads, taobao, kuaishou):
each builds from its YAML on a small draw of its planted set, trains a few steps through the one
Trainer (the loss goes down), and gives equal outputs and gradients under the reference backend
and the fused default from the same weights; the planted sets (rankops.data.synthetic_mtl) are
deterministic per seed and their planted signal is what lifts the ceiling."""

import pytest
import torch

import rankops.models as zoo
from rankops.data import planted
from rankops.data.synthetic import ceiling
from rankops.data.synthetic_mtl import PLANTED, without_dense
from tests.recipes.common import (assert_training_lowers_loss, assert_yaml_and_module, build, fused_and_reference,
                                   planted_draw, recipe_yaml)

MINE = ("youtube", "linkedin_feed", "csrec", "spotify", "snapchat_ads", "taobao", "kuaishou")
SMALL_DATA = 1200  # rows of each recipe's planted draw


@pytest.fixture(scope="module", params=MINE)
def recipe(request):
    """(name, YAML config, a small draw of its planted set)."""
    cfg = recipe_yaml(request.param)
    return request.param, cfg, planted_draw(cfg, SMALL_DATA)


def test_every_recipe_has_its_yaml_and_module():
    assert_yaml_and_module(MINE)


def test_builds_and_trains_from_its_yaml(recipe):
    name, cfg, data = recipe
    model = build(cfg, data.schema)
    assert model.name == name
    assert_training_lowers_loss(model, data, float(cfg["lr"]), probe_rows=256, max_steps=16)


def test_fused_equals_reference(recipe):
    name, cfg, data = recipe
    model = build(cfg, data.schema).eval()
    batch = data.take(torch.arange(37))
    kw = {"with_bias": True} if model.bias_tower is not None else {}  # the training-time logits too
    (out, grads), (ref_out, ref_grads) = fused_and_reference(model, batch, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=lambda s: f"{n}: {s}")


def test_recipe_schema_errors():
    no_position = planted.make("crossed_tasks", num_samples=10, seed=0).schema
    with pytest.raises(ValueError, match="bias features"):
        zoo.build("youtube", no_position)
    with pytest.raises(ValueError, match="vector features"):
        zoo.build("spotify", no_position)
    with pytest.raises(ValueError, match="behaviour sequence"):
        zoo.build("kuaishou", no_position)
    with pytest.raises(ValueError, match="task_weights"):
        zoo.build("linkedin_feed", planted.make("shared_interest", num_samples=10, seed=0).schema,
                  task_weights={"nope": 1.0})
    one_task = no_position.subset(tasks=["a"])
    for name in ("csrec", "snapchat_ads"):
        with pytest.raises(ValueError, match="at least 2 tasks"):
            zoo.build(name, one_task)


def test_linkedin_task_weights_weigh_the_loss():
    data = planted.make("shared_interest", num_samples=50, seed=0)
    model = build({"model": "linkedin_feed", "model_config": {"task_weights": {"share": 3.0, "dwell": 0.0}}},
                   data.schema)
    assert [t.weight for t in model.schema.tasks] == [1.0, 3.0, 0.0]
    assert model.config()["task_weights"] == {"share": 3.0, "dwell": 0.0}
    batch = data.take(torch.arange(50))
    out = model(batch)
    labels = batch.labels.clone()
    labels[:, 2] += 100.0  # dwell weighs 0: its labels change nothing
    torch.testing.assert_close(model.loss(out, labels), model.loss(out, batch.labels))


# ---------------------------------------------------------------------------------------------
# the planted sets

SIGNAL = {  # set -> (the scale that zeroes its planted signal, the tasks whose ceiling it lifts)
    "position_bias": ("position_bias", ("click",)),
    "shared_interest": ("shared_scale", ("click", "share")),
    "dense_vectors": ("vector_scale", ("stream", "save")),
    "crossed_tasks": ("cross_scale", ("a", "b")),
    "sequence_tasks": ("affinity_scale", ("click", "buy")),
    "sinusoid_tasks": ("signal_std", ("a", "b")),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_set_is_deterministic_per_seed(name):
    a, b, c = (PLANTED[name](num_samples=300, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.dense, b.dense)
    assert all(torch.equal(a.sparse[k], b.sparse[k]) for k in a.sparse)
    assert all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)
    assert not torch.equal(a.labels, c.labels)
    assert a.labels.shape == (300, a.schema.num_tasks)
    a.take(torch.arange(300)).validate(a.schema)


@pytest.mark.parametrize("name", sorted(SIGNAL))
def test_planted_signal_lifts_the_ceiling(name):
    scale, tasks = SIGNAL[name]
    on, off = (ceiling(PLANTED[name](num_samples=4000, seed=0, **{scale: s})) for s in (1.0, 0.0))
    for t in tasks:
        assert on[t] > off[t] + 0.05, (t, on[t], off[t])


def test_position_bias_keeps_the_unbiased_truth():
    data = PLANTED["position_bias"](num_samples=3000, seed=0)
    assert {"prob/relevance", "label/relevance", "prob/click", "prob/like"} <= set(data.extra)
    c = ceiling(data)
    assert c["click"] > c["relevance"]  # position explains clicks beyond relevance
    # the logging policy put the more relevant items higher: position is confounded with relevance
    pos, rel = data.extra["position"].double(), data.extra["prob/relevance"].double()
    assert torch.corrcoef(torch.stack([pos, rel]))[0, 1] < -0.2
    unbiased = PLANTED["position_bias"](num_samples=3000, seed=0, position_bias=0.0)
    torch.testing.assert_close(unbiased.extra["prob/click"], unbiased.extra["prob/relevance"])
    assert data.schema.tasks[1].kind == "regression"


def test_without_dense_drops_the_vectors():
    data = PLANTED["dense_vectors"](num_samples=100, vector_dim=6, seed=0)
    assert data.dense.shape == (100, 6)
    bare = without_dense(data, ["item_vec"])
    assert bare.dense.shape == (100, 0) and bare.schema.dense == []
    assert torch.equal(bare.labels, data.labels)
    with pytest.raises(ValueError, match="not dense features"):
        without_dense(data, ["nope"])


def _planted_logits(data):
    return torch.stack([torch.logit(data.extra[f"prob/{t}"].double()) for t in ("a", "b")])


def test_sinusoid_tasks_correlation_is_the_knob():
    """cos(w_a, w_b) = rho: at 1 the tasks are the same function of x, at 0 unrelated ones."""
    same = PLANTED["sinusoid_tasks"](num_samples=20_000, seed=0, task_correlation=1.0, first_order_std=0.0)
    torch.testing.assert_close(same.extra["prob/a"], same.extra["prob/b"])
    corr = {rho: float(torch.corrcoef(_planted_logits(PLANTED["sinusoid_tasks"](
        num_samples=20_000, seed=0, task_correlation=rho, first_order_std=0.0)))[0, 1]) for rho in (0.0, 0.5, 0.9)}
    assert abs(corr[0.0]) < 0.05 < corr[0.5] < corr[0.9] < 1.0, corr
    # the same draws whatever rho: task a, the ids and x do not move
    other = PLANTED["sinusoid_tasks"](num_samples=20_000, seed=0, task_correlation=0.3, first_order_std=0.0)
    assert torch.equal(other.dense, same.dense) and torch.equal(other.extra["prob/a"], same.extra["prob/a"])


def test_sinusoid_tasks_sines_make_it_nonlinear():
    """Without the sines a task's logit is linear in x (a least-squares fit holds it); with them a
    linear fit misses a large part of it: what needs hidden units, and what a shared bottom must split."""
    def linear_r2(data):
        x = torch.cat([data.dense.double(), torch.ones(len(data), 1, dtype=torch.float64)], 1)
        y = torch.logit(data.extra["prob/a"].double())[:, None]
        resid = y - x @ torch.linalg.lstsq(x, y).solution
        return 1 - float(resid.var() / y.var())
    kw = dict(num_samples=5000, seed=0, first_order_std=0.0)
    assert linear_r2(PLANTED["sinusoid_tasks"](**kw, sine_scale=0.0)) > 0.999
    assert linear_r2(PLANTED["sinusoid_tasks"](**kw)) < 0.7


@pytest.mark.parametrize("bad", [dict(task_correlation=1.5), dict(dense_dim=15, num_directions=8),
                                 dict(num_directions=0), dict(num_fields=0)])
def test_sinusoid_tasks_bad_arguments(bad):
    with pytest.raises(ValueError, match="make_sinusoid_tasks"):
        PLANTED["sinusoid_tasks"](num_samples=10, **bad)
