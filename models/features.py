"""The feature arch every model starts with: a batch -> one embedding per sparse feature and one
pooled embedding per behaviour sequence (TorchRec's ``SparseArch``, grown by sequence pooling),
as one ``[B, F, D]`` tensor when the widths agree."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rankops.data.batch import Batch
from rankops.data.schema import Schema
from rankops.nn import DINAttention, EmbeddingBagCollection, EmbeddingBagConfig, MultiHeadTargetAttention
from rankops.nn.mlp import masked_mean
from rankops.nn.self_attention import TransformerBlock
from rankops.ops.embedding_bag import FusedOptimizer

SEQUENCE_POOLINGS = ("mean", "din", "attention", "transformer")


def embedding_collection(schema: Schema, dim: int | None = None, fused_optimizer: FusedOptimizer | None = None,
                         init: str = "uniform") -> tuple[EmbeddingBagCollection, list[int]]:
    """One EBC over the schema's sparse features (tables shared as the schema says; ``dim``
    overrides every table's width, e.g. one weight per task for a linear part; ``init`` as the
    EBC's) and, for each feature in schema order, its position in the EBC's output."""
    tables: dict[str, EmbeddingBagConfig] = {}
    for f in schema.sparse:
        t = tables.get(f.table_name)
        if t is None:
            tables[f.table_name] = EmbeddingBagConfig(f.table_name, f.vocab_size, dim or f.embedding_dim, f.pooling,
                                                      [f.name])
        else:
            t.feature_names.append(f.name)
    ebc = EmbeddingBagCollection(list(tables.values()), fused_optimizer=fused_optimizer, init=init)
    return ebc, [ebc.features.index(f.name) for f in schema.sparse]


class FeatureArch(nn.Module):
    """``batch -> [B, F + S, D]``: the sparse features' pooled embeddings in schema order, then each
    of the S sequences pooled against its target's embedding (``[B, sum of D_f]`` when the sparse
    features' widths differ; sequences need one width).

    sequence_pooling: ``"mean"`` (masked mean), ``"din"`` (DIN's activation unit, ``att_hidden_units``,
    ``att_activation``), ``"attention"`` (multi-head target attention, ``att_heads``) or
    ``"transformer"`` (BST: ``transformer_layers`` blocks over ``[target, sequence]`` with learned
    positions; the target token's output). A sequence of id lists (``item_len``: e.g. the titles of
    clicked news, against a multi-hot title) first pools each position's list as its target's bag
    is pooled (a bag of words per clicked title).
    """

    def __init__(self, schema: Schema, *, sequence_pooling: str = "mean", att_hidden_units: Sequence[int] = (80, 40),
                 att_activation: str = "dice", att_heads: int = 1, transformer_layers: int = 1,
                 transformer_dropout: float = 0.1, embedding_optimizer: FusedOptimizer | None = None):
        super().__init__()
        if sequence_pooling not in SEQUENCE_POOLINGS:
            raise ValueError(f"sequence_pooling must be one of {SEQUENCE_POOLINGS}, got {sequence_pooling!r}")
        self.schema, self.sequence_pooling = schema, sequence_pooling
        self.embeddings, order = embedding_collection(schema, fused_optimizer=embedding_optimizer)
        self._order = None if order == list(range(len(order))) else order
        self._dims = [schema.feature(f).embedding_dim for f in self.embeddings.features]
        names = [f.name for f in schema.sparse]
        self._targets = {s.name: (names.index(s.target), schema.feature(s.target).table_name) for s in schema.sequences}
        self.pool = nn.ModuleDict()
        self.positions = nn.ParameterDict()
        D = schema.sparse[0].embedding_dim
        for s in schema.sequences:
            if sequence_pooling == "din":
                self.pool[s.name] = DINAttention(D, tuple(att_hidden_units), activation=att_activation)
            elif sequence_pooling == "attention":
                self.pool[s.name] = MultiHeadTargetAttention(D, att_heads)
            elif sequence_pooling == "transformer":
                self.pool[s.name] = nn.ModuleList(TransformerBlock(D, att_heads, dropout=transformer_dropout)
                                                  for _ in range(transformer_layers))
                self.positions[s.name] = nn.Parameter(torch.randn(s.max_len + 1, D) * 0.02)

    @property
    def num_fields(self) -> int:
        return len(self.schema.sparse) + len(self.schema.sequences)

    @property
    def output_dim(self) -> int:
        return sum(self._dims) + sum(self.schema.feature(s.target).embedding_dim for s in self.schema.sequences)

    def sequence_embeddings(self, batch: Batch, name: str) -> Tensor:
        """``[B, L, D]``: the rows of sequence ``name``'s ids in its target's table, zeros at padding.

        One bag per position, weighted 1 (valid) or 0 (padding, its id replaced by row 0), so every
        shape is static: no device sync, and torch.compile needs no data-dependent sizes."""
        ids, lengths = batch.sequences[name]
        if ids.dim() == 3:
            return self._list_sequence_embeddings(name, ids, lengths)
        B, L = ids.shape
        valid = torch.arange(L, device=ids.device)[None, :] < lengths[:, None]
        ids = torch.where(valid, ids, 0).reshape(-1)
        offsets = torch.arange(B * L + 1, device=ids.device)
        weights = valid.reshape(-1).to(self.embeddings.weights[0].dtype)
        rows = self.embeddings.lookup(self._targets[name][1], ids, offsets, weights, mode="sum")
        return rows.view(B, L, -1)

    def _list_sequence_embeddings(self, name: str, ids: Tensor, lengths: Tensor) -> Tensor:
        """A sequence of id lists (``[B, L, T]``, the schema's ``item_len``, 0-padded): each position's
        ids pooled as its target's bag is (sum, or the mean over its non-padding ids), ``[B, L, D]``."""
        B, L, T = ids.shape
        valid = (torch.arange(L, device=ids.device)[None, :, None] < lengths[:, None, None]) & (ids != 0)
        offsets = torch.arange(0, B * L * T + 1, T, device=ids.device)
        weights = valid.reshape(-1).to(self.embeddings.weights[0].dtype)
        rows = self.embeddings.lookup(self._targets[name][1], torch.where(valid, ids, 0).reshape(-1), offsets,
                                      weights, mode="sum").view(B, L, -1)
        target = self.schema.sequences[[s.name for s in self.schema.sequences].index(name)].target
        if self.schema.feature(target).pooling != "sum":
            rows = rows / valid.sum(2, keepdim=True).clamp(min=1).to(rows.dtype)
        return rows

    @property
    def uniform(self) -> bool:
        """Whether every field has one width (then forward gives ``[B, F, D]``)."""
        return len(set(self._dims)) == 1

    def forward(self, batch: Batch) -> Tensor:
        """``[B, F, D]`` (the sparse fields in schema order, then the pooled sequences) when every
        field has one width, else ``[B, sum of widths]`` (no sequences then)."""
        emb = self.embeddings(batch.sparse)  # [B, sum of dims] in the collection's feature order
        B = emb.shape[0]
        if not self.uniform:
            if self._order is not None:
                parts = emb.split(self._dims, 1)
                emb = torch.cat([parts[i] for i in self._order], 1)
            return emb
        x = emb.view(B, len(self._dims), self._dims[0])  # a view: no copy, one gradient
        if self._order is not None:
            x = x[:, self._order]
        if not self.schema.sequences:
            return x
        pooled = []
        for s in self.schema.sequences:
            seq = self.sequence_embeddings(batch, s.name)
            lengths = batch.sequences[s.name][1]
            pooled.append(self._pool(s.name, x[:, self._targets[s.name][0]], seq, lengths))
        return torch.cat([x, torch.stack(pooled, 1)], 1)

    def _pool(self, name: str, target: Tensor, seq: Tensor, lengths: Tensor) -> Tensor:
        if self.sequence_pooling == "mean":
            return masked_mean(seq, lengths)
        if self.sequence_pooling == "din":
            return self.pool[name](target, seq, lengths)
        if self.sequence_pooling == "attention":
            return self.pool[name](target, seq, lengths=lengths)
        tokens = torch.cat([target[:, None], seq], 1) + self.positions[name][: seq.shape[1] + 1]
        for block in self.pool[name]:
            tokens = block(tokens, lengths + 1)
        return tokens[:, 0]
