"""Kuaishou real-time short-video ranking (Gong et al., CIKM 2022): multi-head target attention of
the candidate over the user's behaviour sequence (``rankops.target_attention``), then MMoE experts
and one tower per objective.

Planted data: ``sequence_tasks`` (``rankops.data.synthetic_mtl.make_sequence_tasks``).
"""

from ..ranker import Ranker, needs_sequence, needs_tasks, preset

DEFAULTS = dict(sequence_pooling="attention", att_heads=1, towers="mmoe", num_experts=4, expert_hidden_units=(64, 32),
                tower_hidden_units=(16,))


def build(schema, **config) -> Ranker:
    return preset("kuaishou", schema, DEFAULTS, config, lambda s: needs_sequence(s) or needs_tasks(2)(s))
