"""The monolith recipe: builds from its YAML on a small draw of ``long_tail``, trains a few steps through
the one Trainer (the loss goes down), gives equal outputs and gradients under the reference backend and
the fused default from the same weights and id maps; its tables give no two training ids one row where
the hashed table of the same rows does; the planted set is deterministic per seed and its per-id
effects are what lift the ceiling."""

import contextlib
import copy

import pytest
import torch
import yaml

import rankops
import rankops.models as zoo
from rankops.data import planted
from rankops.data.synthetic import ceiling
from rankops.models import recipes
from rankops.models.recipes.monolith import Monolith
from rankops.train.loop import TrainConfig, Trainer


@pytest.fixture(scope="module")
def cfg():
    return yaml.safe_load(recipes.yaml_path("monolith").read_text())


@pytest.fixture(scope="module")
def data(cfg):
    return planted.make("long_tail", **{**cfg["data_config"], "num_samples": 3000}, embedding_dim=cfg["embedding_dim"])


def _build(cfg, schema, **override):
    torch.manual_seed(0)
    return zoo.build(cfg["model"], schema, **{**cfg["model_config"], **override})


def test_yaml(cfg):
    assert cfg["model"] == "monolith" and "monolith" in recipes.RECIPES
    assert cfg["data"] == "synthetic:long_tail" and "long_tail" in planted.sets()
    assert {"epochs", "batch_size", "lr", "seed", "model_config", "data_config"} <= set(cfg)


def test_builds_and_trains_from_its_yaml(cfg, data):
    model = _build(cfg, data.schema)
    assert isinstance(model, Monolith) and model.name == "monolith"
    probe = data.take(torch.arange(512))
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=128, lr=float(cfg["lr"]), seed=0, progress=False))
    model.eval()
    with torch.no_grad():
        before = model.loss(model(probe), probe.labels)
    trainer.fit(data)
    model.eval()
    with torch.no_grad():
        out = model(probe)
    assert out.shape == (512, 1) and torch.isfinite(out).all()
    assert model.loss(out, probe.labels) < before
    assert "ids.tables.user.keys" in model.state_dict()


def test_fused_equals_reference(cfg, data):
    model = _build(cfg, data.schema)
    Trainer(model, TrainConfig(epochs=1, batch_size=256, max_steps=3, progress=False)).fit(data)
    state = copy.deepcopy(model.state_dict())
    batch = data.take(torch.arange(2000, 2064))  # some ids seen, some new: the step inserts and hands out rows
    got = {}
    for backend in ("reference", None):
        model.load_state_dict(state)
        model.train().zero_grad(set_to_none=True)
        torch.manual_seed(1)  # fresh rows are drawn from the same stream
        with rankops.use_backend(backend) if backend else contextlib.nullcontext():
            out = model(batch)
            model.loss(out, batch.labels).backward()
        got[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                        model.ids.tables["user"].lookup(batch.sparse.values()[:64]))
    (o_ref, g_ref, r_ref), (o, g, r) = got["reference"], got[None]
    assert torch.equal(r_ref, r)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    assert g.keys() == g_ref.keys() and g
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], atol=1e-5, rtol=1e-4, msg=n)


def _rows_shared(rows: torch.Tensor, ids: torch.Tensor) -> int:
    """Distinct ids whose row holds another distinct id too."""
    pairs = torch.unique(torch.stack([rows, ids]), dim=1)
    per_row = torch.bincount(pairs[0])
    return int((per_row[pairs[0]] > 1).sum())


def test_no_collisions_where_hashing_collides(cfg, data):
    user = data.sparse["user"]
    collisionless, hashed = (_build(cfg, data.schema, id_map=m) for m in ("collisionless", "modulo"))
    for batch in data.batches(500):
        collisionless.train()(batch)
    rows = collisionless.ids.tables["user"].lookup(user)
    assert bool((rows > 0).all()) and _rows_shared(rows, user) == 0
    kjt = data.take(torch.arange(len(data))).sparse
    hashed_rows = hashed.ids(kjt).values()[:len(data)]
    assert _rows_shared(hashed_rows, user) > 0.2 * user.unique().numel()  # same rows, ids % rows


def test_bad_config(data):
    with pytest.raises(ValueError, match="capacity"):
        zoo.build("monolith", data.schema)
    with pytest.raises(ValueError, match="capacity"):
        zoo.build("monolith", data.schema, capacity={"nope": 8})
    with pytest.raises(ValueError, match="id_map"):
        zoo.build("monolith", data.schema, capacity={"user": 8}, id_map="cuckoo")


def test_planted_set_deterministic_and_per_id_effects_lift_the_ceiling():
    a, b = planted.make("long_tail", num_samples=20_000, seed=3), planted.make("long_tail", num_samples=20_000, seed=3)
    assert all(torch.equal(a.sparse[k], b.sparse[k]) for k in a.sparse) and torch.equal(a.labels, b.labels)
    other = planted.make("long_tail", num_samples=20_000, seed=4)
    assert not torch.equal(a.sparse["user"], other.sparse["user"])
    flat = planted.make("long_tail", num_samples=20_000, seed=3, id_scale=0.0)
    assert torch.equal(flat.sparse["user"], a.sparse["user"])  # the same draws, the per-id effects off
    assert ceiling(a)["click"] > ceiling(flat)["click"] + 0.08
    users = a.sparse["user"]
    assert users.min() >= 0 and users.max() > 2 ** 60  # raw 64-bit ids, not dense indices
    counts = torch.unique(users, return_counts=True)[1]
    assert counts.max() > 100 * counts.median()  # long tail: the top id is far above the typical one


def test_raw_ids_pass_batch_validation_and_checkpoints_keep_the_map(cfg, data):
    batch = data.take(torch.arange(256))
    batch.validate(data.schema)  # raw ids sit in [0, 2**63 - 1): the schema's vocab_size accepts them
    model = _build(cfg, data.schema)
    Trainer(model, TrainConfig(epochs=1, batch_size=256, max_steps=4, progress=False)).fit(data)
    again = zoo.build("monolith", data.schema, **model.config())
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), again(batch))
    assert torch.equal(again.ids.tables["item"].keys, model.ids.tables["item"].keys)
