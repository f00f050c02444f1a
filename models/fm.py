"""Factorization machine (Rendle, ICDM 2010): first-order weights plus the FM second-order term."""

from .ranker import Ranker, preset

DEFAULTS = dict(use_linear=True, use_dnn=False, interaction="fm")


def build(schema, **config) -> Ranker:
    return preset("fm", schema, DEFAULTS, config)
