"""The news recommender of PLM-NR (Wu et al., SIGIR 2021) and MTRec (Bi et al., ACL Findings 2022),
as TorchRec-style arches: a news encoder turns a title into a vector, a user encoder pools the
user's clicked news into one, and the click is their (per-task weighted) dot product.

    NewsArch:  title tokens [N, T]      -> rankops.nn.TextEncoder            -> news vector [N, D]
    UserArch:  clicked news [B, L, D]   -> additive attention (or mean) pool -> user vector [B, D]
    score:     logit_t = w_t . (user * candidate) + b_t   (w_t = 1, b_t = 0 at start: the dot product)

The candidate's title is the multi-hot sparse feature ``title`` (tokens in order); the clicked news
are the sequence of token lists that targets it (``SequenceFeature.item_len``; see
``rankops.data.synthetic_news``). MTRec's auxiliary task classifies the candidate's title into its
category (the one-hot feature ``category``) from the same news vector, so the category teaches the
title encoder; the category is a label there, never an input of the click score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankops.data.batch import Batch
from rankops.data.schema import Schema
from rankops.nn.pooling import make_pooling
from rankops.nn.text import TextEncoder, padded_tokens

from ..base import RankingModel


def feature_ids(batch: Batch, name: str) -> tuple[Tensor, Tensor]:
    """``(values, offsets [B+1])`` of sparse feature ``name``: the KeyedJaggedTensor's whole values
    and that feature's part of its offsets (absolute, so no slice of the values and no device sync:
    ``values[offsets[b]:offsets[b + 1]]`` are sample b's ids)."""
    kjt = batch.sparse
    k, B = kjt.keys().index(name), kjt.stride()
    return kjt.values(), kjt.offsets()[k * B:(k + 1) * B + 1]


def news_inputs(schema: Schema, title: str | None = None) -> tuple[str, str]:
    """``(title feature, history sequence)`` of a news schema, or ValueError saying what is missing."""
    lists = [s for s in schema.sequences if s.item_len is not None and (title is None or s.target == title)]
    if not lists:
        raise ValueError("news recipes read the candidate's title (a multi-hot sparse feature of token ids) and the "
                         "user's clicked titles (a sequence of token lists targeting it: {name: hist_title, target: "
                         f"title, max_len: 50, item_len: 30}}); the schema's sequences are "
                         f"{[(s.name, s.target, s.item_len) for s in schema.sequences]}")
    return lists[0].target, lists[0].name


class NewsRanker(RankingModel):
    """``batch -> [B, T]`` logits: a title encoder shared by the candidate and the clicked news, a
    pooling of the clicked news into a user vector, a weighted dot product per task.

    Args:
        schema: with a multi-hot ``title`` feature and a sequence of token lists targeting it.
        title: the title feature (default: the target of the first sequence with ``item_len``).
        embed_dim: D of the tokens, the news and the user vectors.
        text_layers, text_heads, text_pooling, dropout: the title encoder (``rankops.nn.TextEncoder``).
        user_pooling: ``"attention"`` (PLM-NR's additive attention) or ``"mean"``.
        aux_feature: a one-hot sparse feature the news vector is trained to classify (MTRec: the
            category); None for no auxiliary task.
        aux_weight: ``lambda`` of ``loss = sum_t w_t loss_t + lambda * CE(aux_head(news), aux)``.
    """

    def __init__(self, schema: Schema, name: str, *, title: str | None = None, embed_dim: int = 32,
                 text_layers: int = 1, text_heads: int = 2, text_pooling: str = "attention", dropout: float = 0.0,
                 user_pooling: str = "attention", aux_feature: str | None = None, aux_weight: float = 0.0):
        super().__init__(schema, name)
        self._config = dict(title=title, embed_dim=embed_dim, text_layers=text_layers, text_heads=text_heads,
                            text_pooling=text_pooling, dropout=dropout, user_pooling=user_pooling,
                            aux_feature=aux_feature, aux_weight=aux_weight)
        self.title, self.history = news_inputs(schema, title)
        if not schema.feature(self.title).multi_hot:
            raise ValueError(f"{name}: the title feature {self.title!r} must be multi-hot (a list of token ids)")
        if aux_weight < 0:
            raise ValueError(f"{name}: aux_weight must be >= 0, got {aux_weight}")
        if aux_weight > 0 and aux_feature is None:
            raise ValueError(f"{name}: aux_weight {aux_weight} needs aux_feature (the one-hot label, e.g. category)")
        self.title_len = next(s.item_len for s in schema.sequences if s.name == self.history)
        self.news = TextEncoder(schema.feature(self.title).vocab_size, embed_dim, self.title_len, text_layers,
                                text_heads, dropout=dropout, pooling=text_pooling)
        self.user = make_pooling(user_pooling, embed_dim)
        # 1 / D: the dot product of two unit-scale vectors has variance D, so the first logits stay near 0
        self.task_weight = nn.Parameter(torch.full((schema.num_tasks, embed_dim), 1.0 / embed_dim))
        self.task_bias = nn.Parameter(torch.zeros(schema.num_tasks))
        self.aux_feature, self.aux_weight = aux_feature, aux_weight
        self.aux_head = None
        if aux_feature is not None:
            f = schema.feature(aux_feature)
            if f.multi_hot:
                raise ValueError(f"{name}: aux_feature {aux_feature!r} must be one-hot (one class per news)")
            self.aux_head = nn.Linear(embed_dim, f.vocab_size)
        self._aux_loss: Tensor | None = None

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(candidate news [B, D], user [B, D])``."""
        values, offsets = feature_ids(batch, self.title)
        ids, lengths = batch.sequences[self.history]
        B, L, T = ids.shape
        # every title of the batch (candidates and clicked news) encoded once: popular news and the
        # all-padding titles past each history's length repeat many times in a batch
        titles = torch.cat([padded_tokens(values, offsets, T), ids.reshape(B * L, T)])
        if torch.compiler.is_compiling():  # torch.export / compile: static shapes, every title encoded
            news = self.news(titles)
        else:
            unique, inverse = torch.unique(titles, dim=0, return_inverse=True)
            news = self.news(unique)[inverse]
        cand, clicked = news[:B], news[B:].view(B, L, -1)
        return cand, self.user(clicked, lengths=lengths)

    def forward(self, batch: Batch) -> Tensor:
        cand, user = self.encode(batch)
        if self.aux_head is not None and self.training and self.aux_weight > 0:
            # the auxiliary loss is computed here, where the batch is, and added by loss()
            values, offsets = feature_ids(batch, self.aux_feature)  # one-hot: sample b's id at offsets[b]
            self._aux_loss = F.cross_entropy(self.aux_head(cand), values[offsets[:-1]])
        return (user * cand) @ self.task_weight.T + self.task_bias

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The tasks' weighted loss, plus ``aux_weight`` times the auxiliary cross-entropy of the
        last training forward (each forward's term is used once)."""
        total = super().loss(logits, labels)
        if self._aux_loss is not None:
            total = total + self.aux_weight * self._aux_loss
            self._aux_loss = None
        return total
