"""Logistic regression: one weight per id (and per dense feature), summed: the first-order baseline."""

from .ranker import Ranker, preset

DEFAULTS = dict(use_linear=True, use_dnn=False)


def build(schema, **config) -> Ranker:
    return preset("lr", schema, DEFAULTS, config)
