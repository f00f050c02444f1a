"""MMoE (Ma et al., KDD 2018): experts shared by every task, one softmax gate and one tower per task."""

from .ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(towers="mmoe")


def build(schema, **config) -> Ranker:
    return preset("mmoe", schema, DEFAULTS, config, needs_tasks(2))
