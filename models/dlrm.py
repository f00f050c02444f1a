"""DLRM (Naumov et al., 2019): a bottom MLP maps the dense features to one embedding-sized vector,
which joins the sparse embeddings in pairwise dot products (``DotInteraction``); a top MLP over
[dense vector, dots] gives one logit per task. TorchRec's arches: sparse, dense, interaction, over.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rankops.data.batch import Batch
from rankops.data.schema import Schema
from rankops.nn import DotInteraction
from rankops.nn.mlp import MLP
from rankops.ops.embedding_bag import FusedOptimizer

from .base import RankingModel
from .features import FeatureArch
from .ranker import preset


class DLRM(RankingModel):
    """Shapes: fields ``[B, F, D]``, dense ``[B, n]`` -> bottom ``[B, D]`` -> dots ``[B, D + (F+1)F/2]``
    -> top MLP -> ``[B, T]``."""

    def __init__(self, schema: Schema, *, name: str = "dlrm", bottom_mlp: Sequence[int] = (512, 256),
                 dnn_hidden_units: Sequence[int] = (512, 256), dnn_activation: str = "relu", dnn_dropout: float = 0.0,
                 self_interaction: bool = False, sequence_pooling: str = "mean",
                 embedding_optimizer: FusedOptimizer | None = None):
        super().__init__(schema, name)
        self._config = dict(bottom_mlp=bottom_mlp, dnn_hidden_units=dnn_hidden_units, dnn_activation=dnn_activation,
                            dnn_dropout=dnn_dropout, self_interaction=self_interaction,
                            sequence_pooling=sequence_pooling)
        self.features = FeatureArch(schema, sequence_pooling=sequence_pooling, embedding_optimizer=embedding_optimizer)
        D = schema.sparse[0].embedding_dim
        self.dense_arch = MLP(schema.dense_dim, (*bottom_mlp, D), dnn_activation) if schema.dense_dim else None
        self.interaction = DotInteraction(self_interaction)
        F = self.features.num_fields
        over_in = self.interaction.output_dim(F, D if self.dense_arch is not None else None)
        self.over_arch = MLP(over_in, dnn_hidden_units, dnn_activation, dnn_dropout)
        self.head = torch.nn.Linear(self.over_arch.output_dim, schema.num_tasks)

    def forward(self, batch: Batch) -> Tensor:
        sparse = self.features(batch)  # [B, F, D]
        if self.dense_arch is None:
            z = self.interaction(sparse)
        else:
            z = self.interaction(self.dense_arch(batch.dense), sparse)
        return self.head(self.over_arch(z))


def _one_dim(schema: Schema) -> str | None:
    dims = schema.embedding_dims()
    if len(dims) != 1:
        return ("needs every sparse feature to have one embedding_dim (the dot products pair them); the schema "
                f"has {[(f.name, f.embedding_dim) for f in schema.sparse]}")
    return None


def build(schema, **config) -> DLRM:
    return preset("dlrm", schema, {}, config, _one_dim, cls=DLRM)
