"""Wide & Deep (Cheng et al., DLRS 2016): a wide linear part over the ids beside a DNN, logits summed."""

from .ranker import Ranker, preset

DEFAULTS = dict(use_linear=True)


def build(schema, **config) -> Ranker:
    return preset("wide_deep", schema, DEFAULTS, config)
