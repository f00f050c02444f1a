"""DeepFM (Guo et al., IJCAI 2017): first-order + FM + DNN over one set of embeddings, logits summed."""

from .ranker import Ranker, preset

DEFAULTS = dict(use_linear=True, interaction="fm")


def build(schema, **config) -> Ranker:
    return preset("deepfm", schema, DEFAULTS, config)
