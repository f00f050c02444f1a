"""DCN-V2 (Wang et al., WWW 2021): full-rank (`cross_variant="v2"`), low-rank (`"lowrank"`) or
mixture-of-low-rank-experts (`"mix"`, DCNMix) cross layers, stacked before the DNN or parallel to it
(`interaction_mode`)."""

from .ranker import Ranker, preset

DEFAULTS = dict(interaction="cross", cross_variant="v2", interaction_mode="parallel", cross_num=2)  # DeepCTR-Torch's depth


def build(schema, **config) -> Ranker:
    return preset("dcnv2", schema, DEFAULTS, config)
