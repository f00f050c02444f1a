"""Interaction layers: drop-in for DeepCTR-Torch's ``FM`` and TorchRec's DLRM ``InteractionArch``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rankops.ops.interaction import dot_interaction, fm_interaction, num_pairs


class FactorizationMachine(nn.Module):
    """The FM second-order term (Rendle 2010) over field embeddings, as in DeepFM.

    ``out[b] = sum_{i<j} <x[b,i], x[b,j]> = 0.5 * sum_d ((sum_f x[b,f,d])^2 - sum_f x[b,f,d]^2)``

    Args:
        reduce_sum: sum over the embedding dim (``[B, 1]``, DeepCTR's ``FM``); False keeps it
            (``[B, D]``, NFM's bi-interaction pooling).
    Shapes: ``x [B, F, D] -> [B, 1]`` or ``[B, D]``.

    Example::

        fm = FactorizationMachine()
        logit_fm = fm(torch.randn(32, 39, 16))  # [32, 1]
    """

    def __init__(self, reduce_sum: bool = True):
        super().__init__()
        self.reduce_sum = reduce_sum

    def forward(self, x: Tensor) -> Tensor:
        return fm_interaction(x, self.reduce_sum)

    def extra_repr(self) -> str:
        return f"reduce_sum={self.reduce_sum}"


class DotInteraction(nn.Module):
    """DLRM's pairwise dot interaction.

    ``forward(x)`` with ``x [B, F, D]`` returns the ``<x_i, x_j>`` for the row-major lower
    triangle (i > j; i >= j with ``self_interaction``): ``[B, F*(F-1)/2]``.

    ``forward(dense, sparse)`` is DLRM's interaction arch: the bottom-MLP output ``dense [B, D]``
    joins the embeddings ``sparse [B, F, D]`` as field 0 and the result is ``cat([dense, pairs], 1)``:
    ``[B, D + (F+1)*F/2]``. The pairs are TorchRec ``InteractionArch``'s, in another order (TorchRec
    lists the upper triangle row by row, (0,1),(0,2),...,(1,2)...; here the lower one): a top MLP
    trained in TorchRec needs its input columns permuted (``rankops.patch`` does that).

    Example::

        inter = DotInteraction()
        z = inter(torch.randn(32, 128), torch.randn(32, 26, 128))  # [32, 128 + 351]
    """

    def __init__(self, self_interaction: bool = False):
        super().__init__()
        self.self_interaction = self_interaction

    def output_dim(self, num_fields: int, dense_dim: int | None = None) -> int:
        """Width of the output for ``num_fields`` sparse fields (plus the dense one if given)."""
        if dense_dim is None:
            return num_pairs(num_fields, self.self_interaction)
        return dense_dim + num_pairs(num_fields + 1, self.self_interaction)

    def forward(self, x: Tensor, sparse: Tensor | None = None) -> Tensor:
        if sparse is None:
            return dot_interaction(x, self.self_interaction)
        if x.dim() != 2 or sparse.dim() != 3 or sparse.shape[2] != x.shape[1]:
            raise ValueError(
                f"DotInteraction: dense must be [B, D] and sparse [B, F, D], got {tuple(x.shape)} and {tuple(sparse.shape)}"
            )
        pairs = dot_interaction(torch.cat([x.unsqueeze(1), sparse], 1), self.self_interaction)
        return torch.cat([x, pairs], 1)

    def extra_repr(self) -> str:
        return f"self_interaction={self.self_interaction}"
