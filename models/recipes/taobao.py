"""Alibaba Taobao search, multi-objective (Zheng et al., 2022): DIN's activation unit scores each
behaviour against the candidate (target attention over the sequence), and the attended
representation feeds PLE's task-specific and shared experts, one tower per objective
(click, purchase).

Planted data: ``sequence_tasks`` (``rankops.data.synthetic_mtl.make_sequence_tasks``).
"""

from ..ranker import Ranker, needs_sequence, needs_tasks, preset

DEFAULTS = dict(sequence_pooling="din", att_hidden_units=(32, 16), att_activation="dice", towers="ple",
                num_levels=1, num_specific_experts=1, num_shared_experts=2, expert_hidden_units=(64, 32),
                tower_hidden_units=(16,))


def build(schema, **config) -> Ranker:
    return preset("taobao", schema, DEFAULTS, config, lambda s: needs_sequence(s) or needs_tasks(2)(s))
