"""The shallow bias tower of YouTube's ranker (Zhao et al., Recommending What Video to Watch Next,
RecSys 2019): a small network over the features that cause selection bias (the position an item
was shown at, the device) whose logit is added to the main model's in training and dropped at
serving, so the main model learns relevance and the tower absorbs the bias.

    train:  logit_t = main_t(x) + bias_t(position, device)      (one bias logit per biased task)
    serve:  logit_t = main_t(x)                                  (every item as if shown unbiased)

Position is not an input of the main model: what the logging policy put on top is explained by
the tower, and the main model's ranking is left to the item's relevance.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rankops.nn.embedding_bag import EmbeddingBagCollection, EmbeddingBagConfig
from rankops.nn.mlp import MLP


class BiasTower(nn.Module):
    """``ids of the bias features -> [B, num_outputs]`` bias logits.

    ``h = concat_f(keep_f * E_f[id_f])``, ``out = Linear(MLP(h))``: one embedding per bias feature
    (``features``: ``(name, vocab_size)`` pairs, each read from the batch's KeyedJaggedTensor by
    name, one id per sample), an MLP of ``hidden_units`` (empty: linear in the embeddings, which
    cannot express a position x device interaction) and one output per biased task.

    ``feature_dropout``: in training, each sample's embedding of each bias feature is zeroed with
    this probability (the paper drops position for 10% of the examples), so that the tower also
    gives a sensible logit where the feature is unknown and the main model does not lean on the
    tower to explain everything.

    Shapes: ``forward(kjt)`` with B bags per key (the bias features among its keys) -> ``[B, num_outputs]``.

    Example::

        tower = BiasTower([("position", 10), ("device", 3)], num_outputs=2, hidden_units=(16,))
        bias = tower(batch.sparse)          # [B, 2]: add to the binary tasks' logits in training
    """

    def __init__(self, features: Sequence[tuple[str, int]], num_outputs: int, embedding_dim: int = 8,
                 hidden_units: Sequence[int] = (16,), activation: str = "relu", feature_dropout: float = 0.0):
        super().__init__()
        features = [(str(n), int(v)) for n, v in features]
        if not features:
            raise ValueError("rankops.nn.BiasTower: needs at least one bias feature (e.g. position)")
        if num_outputs < 1 or embedding_dim < 1:
            raise ValueError(f"rankops.nn.BiasTower: needs num_outputs >= 1 and embedding_dim >= 1, got "
                             f"{num_outputs} and {embedding_dim}")
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"rankops.nn.BiasTower: feature_dropout must be in [0, 1), got {feature_dropout}")
        self.feature_names = [n for n, _ in features]
        self.feature_dropout = feature_dropout
        self.embeddings = EmbeddingBagCollection([EmbeddingBagConfig(n, v, embedding_dim, "sum", [n])
                                                  for n, v in features], output="stacked")
        width = len(features) * embedding_dim
        self.mlp = MLP(width, hidden_units, activation)
        self.head = nn.Linear(self.mlp.output_dim, num_outputs)
        nn.init.zeros_(self.head.weight)  # start unbiased: the tower grows only as far as the bias needs
        nn.init.zeros_(self.head.bias)
        self.num_outputs = num_outputs

    def forward(self, features) -> Tensor:
        emb = self.embeddings(features)  # [B, F, D]
        if self.training and self.feature_dropout > 0:
            keep = torch.rand(emb.shape[0], emb.shape[1], 1, device=emb.device) >= self.feature_dropout
            emb = emb * keep.to(emb.dtype)
        return self.head(self.mlp(emb.flatten(1)))
