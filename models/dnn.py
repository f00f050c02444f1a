"""A DNN over the concatenated embeddings and dense features (YouTube-style deep model)."""

from .ranker import Ranker, preset

DEFAULTS = dict()


def build(schema, **config) -> Ranker:
    return preset("dnn", schema, DEFAULTS, config)
