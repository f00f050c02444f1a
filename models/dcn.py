"""DCN (Wang et al., ADKDD 2017): a stack of rank-1 cross layers (cross_num) beside a DNN."""

from .ranker import Ranker, preset

DEFAULTS = dict(interaction="cross", cross_variant="v1", interaction_mode="parallel")


def build(schema, **config) -> Ranker:
    return preset("dcn", schema, DEFAULTS, config)
