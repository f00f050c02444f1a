"""Pooling a padded sequence of vectors into one: additive attention (NRMS / PLM-NR's user and
title pooling) and the masked mean it is compared with."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rankops.nn.mlp import masked_mean


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``[B, L]`` bool: position ``l`` of sample ``b`` is valid when ``l < lengths[b]``."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class AdditiveAttentionPooling(nn.Module):
    """Additive (Bahdanau-style) attention pooling with one learned query (Wu et al., NRMS, EMNLP
    2019; PLM-NR, SIGIR 2021):

    ``a_l = q . tanh(W x_l + b)``, ``alpha = softmax(a)`` over the valid positions, ``out = sum_l alpha_l x_l``.

    The query ``q`` is a parameter, not the candidate: the weights depend on each element's content
    only, so the pooled vector (a user's interest, a title's meaning) is computed once per sequence
    and can be cached for serving, unlike target attention.

    Args:
        embed_dim: D, the width of the elements (and of the output).
        hidden_dim: width of the attention's hidden layer (PLM-NR: 200; default D).
    Shapes: ``x [B, L, D]`` with ``lengths [B]`` (valid prefix) or ``mask [B, L]`` (bool, any
    positions) -> ``[B, D]``; a sample with no valid position gets zeros.
    ``return_weights=True`` also returns ``alpha [B, L]`` (zeros at padding).

    Example::

        pool = AdditiveAttentionPooling(64)
        user = pool(clicked_news[B, 50, 64], lengths=num_clicked)     # [B, 64]
    """

    def __init__(self, embed_dim: int, hidden_dim: int | None = None):
        super().__init__()
        if embed_dim < 1 or (hidden_dim is not None and hidden_dim < 1):
            raise ValueError(f"rankops.nn.AdditiveAttentionPooling: embed_dim and hidden_dim must be >= 1, got "
                             f"{embed_dim}, {hidden_dim}")
        self.embed_dim = embed_dim
        self.proj = nn.Linear(embed_dim, hidden_dim or embed_dim)
        self.query = nn.Linear(hidden_dim or embed_dim, 1, bias=False)

    def forward(self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None,
                return_weights: bool = False):
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"rankops.nn.AdditiveAttentionPooling: x must be [B, L, {self.embed_dim}], got "
                             f"{tuple(x.shape)}")
        if (lengths is None) == (mask is None):
            raise ValueError("rankops.nn.AdditiveAttentionPooling: pass exactly one of lengths or mask")
        if mask is None:
            mask = valid_mask(lengths, x.shape[1])
        elif mask.shape != x.shape[:2]:
            raise ValueError(f"rankops.nn.AdditiveAttentionPooling: mask must be {tuple(x.shape[:2])}, got "
                             f"{tuple(mask.shape)}")
        scores = self.query(torch.tanh(self.proj(x)))[..., 0]  # [B, L]
        # a finite fill, not -inf: a row with no valid position then gives a uniform softmax (not
        # NaN, in the forward or the backward) that the mask zeroes
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        alpha = torch.where(mask, torch.softmax(scores, 1), 0.0)
        out = torch.bmm(alpha[:, None, :], x)[:, 0]
        return (out, alpha) if return_weights else out


class MeanPooling(nn.Module):
    """The masked mean over the valid positions (the baseline attention pooling is compared with):
    ``x [B, L, D]`` with ``lengths [B]`` or ``mask [B, L]`` -> ``[B, D]`` (zeros for none)."""

    def forward(self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if (lengths is None) == (mask is None):
            raise ValueError("rankops.nn.MeanPooling: pass exactly one of lengths or mask")
        if mask is None:
            return masked_mean(x, lengths)
        m = mask.to(x.dtype)
        return torch.bmm(m[:, None, :], x)[:, 0] / m.sum(1, keepdim=True).clamp(min=1)


POOLINGS = {"attention": AdditiveAttentionPooling, "mean": MeanPooling}


def make_pooling(kind: str, embed_dim: int, hidden_dim: int | None = None) -> nn.Module:
    """``"attention"`` (AdditiveAttentionPooling) or ``"mean"`` (MeanPooling)."""
    if kind not in POOLINGS:
        raise ValueError(f"pooling must be one of {tuple(POOLINGS)}, got {kind!r}")
    return AdditiveAttentionPooling(embed_dim, hidden_dim) if kind == "attention" else MeanPooling()
