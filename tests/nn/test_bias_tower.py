"""The shallow bias tower (rankops.nn.BiasTower) and the Ranker's bias_features: added in training,
dropped at serving, read by the tower alone, only on binary tasks."""

import pytest
import torch

import rankops.models as zoo
from rankops.data.schema import Schema
from rankops.data.synthetic import random_batch
from rankops.nn import BiasTower

SCHEMA = Schema(sparse=[{"name": "user", "vocab_size": 13, "embedding_dim": 4},
                        {"name": "position", "vocab_size": 5, "embedding_dim": 4},
                        {"name": "tags", "vocab_size": 7, "embedding_dim": 4, "multi_hot": True},
                        {"name": "device", "vocab_size": 3, "embedding_dim": 4}],
                tasks=[{"name": "click"}, {"name": "watch", "kind": "regression"}, {"name": "like"}])
SMALL = dict(towers="mmoe", num_experts=2, expert_hidden_units=(8,), tower_hidden_units=(4,))


@pytest.fixture(scope="module")
def batch():
    return random_batch(SCHEMA, 17, seed=3)


def _trained_tower():
    tower = BiasTower([("position", 5), ("device", 3)], num_outputs=2, embedding_dim=4, hidden_units=(6,))
    torch.nn.init.normal_(tower.head.weight)  # past the zero start
    return tower


def test_shape_and_zero_start(batch):
    tower = BiasTower([("position", 5), ("device", 3)], num_outputs=2, embedding_dim=4, hidden_units=(6,))
    out = tower(batch.sparse)  # reads its two keys out of a KJT of four
    assert out.shape == (17, 2)
    assert torch.equal(out, torch.zeros(17, 2))  # starts unbiased


def test_depends_on_its_features_only(batch):
    tower = _trained_tower().eval()
    ids = {"position": torch.tensor([0, 1, 2, 3, 4]), "device": torch.tensor([0, 0, 1, 1, 2])}
    out = tower({k: (v, torch.arange(6)) for k, v in ids.items()})
    assert len({tuple(r.tolist()) for r in out}) == 5  # different positions, different bias
    same = tower({k: (v, torch.arange(6)) for k, v in ids.items()})
    torch.testing.assert_close(out, same, rtol=0, atol=0)


def test_feature_dropout_only_in_training():
    tower = BiasTower([("position", 5)], num_outputs=1, embedding_dim=4, hidden_units=(), feature_dropout=0.5)
    torch.nn.init.normal_(tower.head.weight)
    ids = {"position": (torch.full((400,), 2), torch.arange(401))}
    eval_out = tower.eval()(ids)
    assert eval_out.unique().numel() == 1
    train_out = tower.train()(ids)
    dropped = (train_out == tower.head.bias).flatten()  # a dropped id gives the tower's "unknown" logit
    assert 0.35 < dropped.float().mean() < 0.65


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one bias feature"):
        BiasTower([], 1)
    with pytest.raises(ValueError, match="feature_dropout"):
        BiasTower([("position", 5)], 1, feature_dropout=1.0)
    with pytest.raises(ValueError, match="num_outputs"):
        BiasTower([("position", 5)], 0)


def _model(**kw):
    torch.manual_seed(0)
    m = zoo.build("ranker", SCHEMA, bias_features=("position", "device"), bias_hidden_units=(6,), **SMALL, **kw)
    torch.nn.init.normal_(m.bias_tower.head.weight)
    return m


def test_ranker_adds_the_tower_in_training_and_drops_it_at_serving(batch):
    m = _model().eval()
    serve = m(batch)
    with_bias = m(batch, with_bias=True)
    tower = m.bias_tower(batch.sparse)
    diff = with_bias - serve
    torch.testing.assert_close(diff[:, [0, 2]], tower, rtol=1e-5, atol=1e-6)  # on the binary tasks
    assert torch.equal(diff[:, 1], torch.zeros(17))  # never on the regression task
    m.train()
    torch.testing.assert_close(m(batch), with_bias, rtol=1e-5, atol=1e-6)  # training mode: added by default
    torch.testing.assert_close(m(batch, with_bias=False), serve, rtol=1e-5, atol=1e-6)


def test_main_model_never_reads_the_bias_features(batch):
    m = _model().eval()
    names = batch.sparse.keys()
    assert "position" not in m.features.embeddings.features and "device" not in m.features.embeddings.features
    moved = random_batch(SCHEMA, 17, seed=3)
    vals = moved.sparse.values().clone()
    off = moved.sparse.offsets()
    for f in ("position", "device"):  # change every position and device id
        k = names.index(f)
        a, b = int(off[k * 17]), int(off[(k + 1) * 17])
        vals[a:b] = (vals[a:b] + 1) % SCHEMA.feature(f).vocab_size
    from rankops.nn import KeyedJaggedTensor
    moved.sparse = KeyedJaggedTensor(names, vals, offsets=off)
    torch.testing.assert_close(m(moved), m(batch), rtol=0, atol=0)  # serving: position changes nothing
    assert not torch.allclose(m(moved, with_bias=True), m(batch, with_bias=True))


def test_bad_bias_features():
    with pytest.raises(ValueError, match="one-hot sparse feature"):
        zoo.build("ranker", SCHEMA, bias_features=("tags",), **SMALL)
    with pytest.raises(ValueError, match="one-hot sparse feature"):
        zoo.build("ranker", SCHEMA, bias_features=("nope",), **SMALL)
    reg = Schema(sparse=SCHEMA.sparse, tasks=[{"name": "w", "kind": "regression"}])
    with pytest.raises(ValueError, match="binary task"):
        zoo.build("ranker", reg, bias_features=("position",))
    with pytest.raises(ValueError, match="main model needs"):
        zoo.build("ranker", Schema(sparse=[{"name": "position", "vocab_size": 5}]), bias_features=("position",))
