"""Tencent Kandian, CSRec (Bai et al., A Contrastive Sharing Model for Multi-Task Recommendation,
WWW 2022): one shared network in which each task trains a subnetwork picked by a learned
parameter mask (sparse sharing), a contrastive mask that hands a conflicting parameter's update
to the task it matters most to, and alternating task updates (``rankops.nn.SparseSharing``).

How the alternation runs through the one Trainer (``rankops.train.loop``, unchanged): the trainer
calls ``model(batch)`` then ``model.loss(logits, labels)`` once per optimiser step. The model keeps
a step counter (``rankops.train.losses.AlternatingTasks``, saved in its state dict); in training
mode its forward builds the autograd graph through the subnetwork of task ``step mod T`` only and
``loss()`` returns that task's loss and advances the counter, so the steps go round robin over the
tasks. Evaluation (eval mode) computes every task's subnetwork and calls no loss.

Planted data: ``sinusoid_tasks`` (``rankops.data.synthetic_mtl.make_sinusoid_tasks``: two tasks reading
different ridge functions of the same dense features, the MMoE paper's synthetic).

Defaults: one shared network of (64, 8), as wide as MMoE's 4 experts of (16, 8) together (about their
weights, plus a mask score per weight and task), so the tasks have room to keep subnetworks of their
own; masks start on (``mask_init=1``: a score that starts near 0 flips a weight off after a few Adam
steps, before its task has a gradient worth keeping it for); the mask penalty 1e-3 (on
``sinusoid_tasks`` 0 and 1e-3 give the same mean AUC within 0.003, same seeds). Alternating updates give each task one step in ``T``: the YAML
trains twice the epochs of the joint models, the same updates per task.
"""

from ..ranker import Ranker, needs_tasks, preset

DEFAULTS = dict(towers="sparse_sharing", expert_hidden_units=(64, 8), tower_hidden_units=(16,), alternate_tasks=True,
                mask_penalty=1e-3, mask_init=1.0)


def build(schema, **config) -> Ranker:
    return preset("csrec", schema, DEFAULTS, config, needs_tasks(2))
