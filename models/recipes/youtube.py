"""YouTube next-watch ranking (Zhao et al., Recommending What Video to Watch Next, RecSys 2019):
MMoE over engagement (click: binary) and satisfaction (watch time: regression; like: binary)
objectives, plus a shallow tower over the position an item was shown at and the device, whose
logit is added to every binary task's in training and dropped at serving, so the main model ranks
by relevance and the tower absorbs position bias (``rankops.nn.BiasTower``; position is dropped
for 10% of the training examples, as in the paper).

Planted data: ``position_bias`` (``rankops.data.synthetic_mtl.make_position_bias``).
"""

from ..ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(towers="mmoe", num_experts=4, expert_hidden_units=(64, 32), tower_hidden_units=(16,),
                bias_features=("position", "device"), bias_hidden_units=(16,), bias_dropout=0.1)


def build(schema, **config) -> Ranker:
    bias = config.get("bias_features", DEFAULTS["bias_features"])

    def requires(s):
        missing = [f for f in bias if f not in [x.name for x in s.sparse]]
        if missing:
            return (f"reads the bias features {list(bias)} (sparse features of the schema) in its shallow tower; "
                    f"the schema lacks {missing} (set bias_features to the position / device features it has, or "
                    f"[] for no tower)")
        return needs_tasks(2)(s)

    return preset("youtube", schema, DEFAULTS, config, requires)
