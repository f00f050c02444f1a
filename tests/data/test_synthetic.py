import pytest
import torch

from rankops.data.synthetic import make_ctr
from rankops.train.metrics import auc


def test_planted_structure_is_learnable_and_deterministic():
    a = make_ctr(num_samples=20_000, num_fields=8, vocab_size=50, seed=3)
    b = make_ctr(num_samples=20_000, num_fields=8, vocab_size=50, seed=3)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)
    assert a.ids.shape == (20_000, 8) and int(a.ids.max()) < 50 and int(a.ids.min()) >= 0
    # the planted probabilities rank the labels well above chance: there is signal to learn
    assert auc(a.probs, a.labels) > 0.7
    # ...and part of it is in the interactions: without them the oracle loses AUC
    no_pairs = make_ctr(num_samples=20_000, num_fields=8, vocab_size=50, seed=3, interaction_scale=0.0)
    assert auc(a.probs, a.labels) > auc(no_pairs.probs, a.labels) + 0.01


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_ctr(num_fields=1)
