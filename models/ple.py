"""PLE (Tang et al., RecSys 2020): num_levels CGC levels of task-specific and shared experts, one tower
per task."""

from .ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(towers="ple")


def build(schema, **config) -> Ranker:
    return preset("ple", schema, DEFAULTS, config, needs_tasks(2))
