"""AutoInt+ (Song et al., CIKM 2019): att_layer_num multi-head self-attention (interacting) layers over
the fields beside a DNN; `use_dnn=False` is plain AutoInt."""

from .ranker import Ranker, preset

DEFAULTS = dict(interaction="autoint", interaction_mode="parallel")


def build(schema, **config) -> Ranker:
    return preset("autoint", schema, DEFAULTS, config)
