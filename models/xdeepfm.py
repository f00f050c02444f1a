"""xDeepFM (Lian et al., KDD 2018): first-order + CIN (cin_layer_size) + DNN, logits summed."""

from .ranker import Ranker, preset

DEFAULTS = dict(use_linear=True, interaction="cin")


def build(schema, **config) -> Ranker:
    return preset("xdeepfm", schema, DEFAULTS, config)
