import math

import torch

from rankops.train.metrics import auc, logloss


def brute_auc(s, y):
    pos = [a for a, l in zip(s, y) if l == 1]
    neg = [a for a, l in zip(s, y) if l == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 7, (200,), generator=g).float()  # many ties
    y = torch.randint(0, 2, (200,), generator=g).float()
    assert math.isclose(auc(s, y), brute_auc(s.tolist(), y.tolist()), rel_tol=1e-12)
    assert auc(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])) == 1.0
    assert math.isnan(auc(torch.rand(5), torch.ones(5)))


def test_logloss():
    assert math.isclose(logloss(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])), math.log(2), rel_tol=1e-9)
