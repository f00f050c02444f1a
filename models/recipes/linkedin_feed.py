"""LinkedIn homepage feed, multi-task ranking: one model for the feed's objectives, binary (click,
share) and regression (dwell time) heads side by side, each task's loss weighted in the sum
(``sum_t w_t * loss_t``: sigmoid cross-entropy or squared error by ``Task.kind``), on MMoE experts.

``task_weights``: ``{task: weight}`` overriding the schema's ``Task.weight`` for this model (the
recipe's own weighting of the objectives; tasks not named keep theirs).

Planted data: ``shared_interest`` (``rankops.data.synthetic_mtl.make_shared_interest``).
"""

from rankops.data.schema import Schema

from ..ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(towers="mmoe", num_experts=4, expert_hidden_units=(64, 32), tower_hidden_units=(16,))


def weighted(schema: Schema, task_weights: dict[str, float]) -> Schema:
    """``schema`` with the tasks' loss weights replaced by ``task_weights``."""
    names = [t.name for t in schema.tasks]
    unknown = sorted(set(task_weights) - set(names))
    if unknown:
        raise ValueError(f"rankops.models.linkedin_feed: task_weights names {unknown}, not tasks of the schema "
                         f"({names})")
    d = schema.to_dict()
    d["tasks"] = [{**t, "weight": float(task_weights.get(t["name"], t["weight"]))} for t in d["tasks"]]
    return Schema.from_dict(d)


def build(schema, task_weights: dict[str, float] | None = None, **config) -> Ranker:
    model = preset("linkedin_feed", weighted(schema, dict(task_weights or {})), DEFAULTS, config, needs_tasks(2))
    model._config["task_weights"] = dict(task_weights or {})
    return model
