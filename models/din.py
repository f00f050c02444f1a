"""DIN (Zhou et al., KDD 2018): each behaviour sequence pooled by DIN's activation unit against its
target (the candidate), then a DNN."""

from .ranker import Ranker, needs_sequence, preset

DEFAULTS = dict(sequence_pooling="din")


def build(schema, **config) -> Ranker:
    return preset("din", schema, DEFAULTS, config, needs_sequence)
