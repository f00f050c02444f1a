"""ESMM (Ma et al., SIGIR 2018): CTR and CVR towers over shared embeddings, trained on the whole
impression space through pCTCVR = pCTR x pCVR, so the CVR tower never sees only clicked samples.

Tasks: the schema's first task is the click, the second the conversion *on the impression* (click
and convert: the CTCVR label). ``predict`` gives ``[pCTR, pCTCVR]`` (what the labels measure);
``cvr(logits)`` gives pCVR.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rankops.data.schema import Schema
from rankops.train.losses import esmm_loss

from .ranker import Ranker, preset


class ESMM(Ranker):
    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        w = tuple(t.weight for t in self.schema.tasks)
        return esmm_loss(logits[:, 0], logits[:, 1], labels[:, 0], labels[:, 1], w)

    def predict(self, logits: Tensor) -> Tensor:
        p = torch.sigmoid(logits)
        return torch.stack([p[:, 0], p[:, 0] * p[:, 1]], 1)

    def cvr(self, logits: Tensor) -> Tensor:
        """pCVR = p(conversion | click, x), for every impression."""
        return torch.sigmoid(logits[:, 1])


def _two_binary_tasks(schema: Schema) -> str | None:
    if schema.num_tasks != 2 or any(t.kind != "binary" for t in schema.tasks):
        return ("needs exactly two binary tasks, click then conversion-on-impression (CTCVR); the schema has "
                f"{[(t.name, t.kind) for t in schema.tasks]}")
    return None


# the shared part is the embeddings only (an empty shared bottom); each task has its own MLP tower
DEFAULTS = dict(towers="shared_bottom", dnn_hidden_units=(), tower_hidden_units=(256, 128))


def build(schema, **config) -> ESMM:
    return preset("esmm", schema, DEFAULTS, config, _two_binary_tasks, cls=ESMM)
