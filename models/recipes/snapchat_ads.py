"""Snapchat ad ranking (Snap engineering): a DCN-V2 cross network as the shared bottom (its crossed
features, beside the embeddings they were crossed from, are what every expert reads) and PLE's task-specific and shared experts on top, one
tower per task: the crosses every objective needs, learned once, and experts that keep
conflicting objectives apart.

Planted data: ``crossed_tasks`` (``rankops.data.synthetic_mtl.make_crossed_tasks``).
"""

from ..ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(interaction="cross", cross_variant="v2", cross_num=2, interaction_mode="parallel", towers="ple",
                num_levels=1, num_specific_experts=1, num_shared_experts=1, expert_hidden_units=(256, 128),
                tower_hidden_units=(16,))


def build(schema, **config) -> Ranker:
    return preset("snapchat_ads", schema, DEFAULTS, config, needs_tasks(2))
