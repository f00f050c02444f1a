"""Home Depot, M2TRec (Shalaby et al., M2TRec: Metadata-aware Multi-task Transformer for
Large-scale and Cold-start free Session-based Recommendations, RecSys 2022): a transformer over the
session's items, each item's token the sum of its id embedding and its **metadata** embeddings
(category ids per item), and multi-task heads. Ranking a candidate here (the paper scores the
catalogue): the candidate, encoded the same way, attends over the transformer's outputs
(``rankops.nn.MultiHeadTargetAttention``), and ``[candidate, attended, candidate * attended]`` feeds
a shared MLP and one tower per task.

The metadata is what lets cold items score well: an item whose id was rarely or never trained on
is still known by its category. ``metadata=[]`` is the comparison: the same model over ids alone.

Planted data: ``cold_items`` (``rankops.data.synthetic_news.make_cold_items``).

    SparseArch:   rankops.models.features.FeatureArch's tables (item, category, ... ; EBC lookups)
    SessionArch:  token_l = E_item[s_l] + sum_m E_m[meta_m(s_l)] + P_l -> TransformerBlock x layers
    TargetArch:   a = MHTA(candidate token, session outputs, lengths)
    OverArch:     MLP([c, a, c * a]) -> one MLP tower per task -> logits [B, T]
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rankops.data.batch import Batch
from rankops.data.schema import Schema
from rankops.nn import MLP, MultiHeadTargetAttention, TransformerBlock

from ..base import RankingModel
from ..features import FeatureArch

DEFAULTS = dict(item="item", metadata=("category",), transformer_layers=1, att_heads=2, dropout=0.0,
                dnn_hidden_units=(64, 32), tower_hidden_units=(16,))


class M2TRec(RankingModel):
    """``batch -> [B, T]``: see the module docstring. ``item``: the candidate's id feature (a
    sequence must target it: the session); ``metadata``: sparse features of the candidate whose
    per-item sequences (targeting them) run beside the session's ids."""

    def __init__(self, schema: Schema, *, item: str = "item", metadata: Sequence[str] = ("category",),
                 transformer_layers: int = 1, att_heads: int = 2, dropout: float = 0.0,
                 dnn_hidden_units: Sequence[int] = (64, 32), tower_hidden_units: Sequence[int] = (16,)):
        super().__init__(schema, "m2trec")
        metadata = list(metadata)
        self._config = dict(item=item, metadata=metadata, transformer_layers=transformer_layers, att_heads=att_heads,
                            dropout=dropout, dnn_hidden_units=tuple(dnn_hidden_units),
                            tower_hidden_units=tuple(tower_hidden_units))
        by_target = {s.target: s.name for s in schema.sequences if s.item_len is None}
        sparse = [f.name for f in schema.sparse]
        for f in [item] + metadata:
            if f not in sparse or f not in by_target:
                raise ValueError(f"m2trec: {f!r} must be a sparse feature of the candidate with a session sequence "
                                 f"targeting it (sparse {sparse}, sequences by target {by_target})")
        dims = {schema.feature(f).embedding_dim for f in [item] + metadata}
        if len(dims) != 1:
            raise ValueError(f"m2trec: the item and metadata embeddings are summed and need one width, got {dims}")
        D = dims.pop()
        self.item, self.metadata = item, metadata
        self.sessions = [by_target[f] for f in [item] + metadata]
        # the tables of the features it reads (FeatureArch: its EBC and sequence lookups)
        unread = [f for f in sparse if f not in [item] + metadata]
        unread += [s.name for s in schema.sequences if s.name not in self.sessions]
        self.sparse_arch = FeatureArch(schema.subset(drop=unread))
        self.fields = [self.sparse_arch.embeddings.features.index(f) for f in [item] + metadata]
        L = max(s.max_len for s in schema.sequences if s.name in self.sessions)
        self.positions = nn.Parameter(torch.randn(L, D) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(D, att_heads, dropout=dropout) for _ in range(transformer_layers))
        self.target = MultiHeadTargetAttention(D, att_heads)
        self.dnn = MLP(3 * D, dnn_hidden_units)
        self.towers = nn.ModuleList(nn.Sequential(MLP(self.dnn.output_dim, tower_hidden_units),
                                                  nn.Linear(tower_hidden_units[-1] if tower_hidden_units
                                                            else self.dnn.output_dim, 1))
                                    for _ in schema.tasks)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.sparse_arch.embeddings(batch.sparse)  # [B, F * D] in the collection's feature order
        B = emb.shape[0]
        fields = emb.view(B, len(self.sparse_arch.embeddings.features), -1)
        cand = fields[:, self.fields].sum(1)  # [B, D]
        lengths = batch.sequences[self.sessions[0]][1]
        tokens = sum(self.sparse_arch.sequence_embeddings(batch, s) for s in self.sessions)  # [B, L, D]
        h = tokens + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h, lengths)
        a = self.target(cand, h, lengths=lengths)
        x = self.dnn(torch.cat([cand, a, cand * a], 1))
        return torch.cat([tower(x) for tower in self.towers], 1)


def build(schema, **config) -> M2TRec:
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"m2trec: unknown options {unknown}; options: {sorted(DEFAULTS)}")
    return M2TRec(schema, **{**DEFAULTS, **config})
