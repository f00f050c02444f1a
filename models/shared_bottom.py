"""Shared-bottom multi-task model (Caruana 1997): one DNN for all tasks, one tower per task."""

from .ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(towers="shared_bottom")


def build(schema, **config) -> Ranker:
    return preset("shared_bottom", schema, DEFAULTS, config, needs_tasks(2))
