"""A small text encoder for item titles (news headlines, product names), trained from scratch with
the ranking model: token embeddings from an ``EmbeddingBagCollection`` table, learned positions,
``TransformerBlock``s (BST's post-norm block) and a pooling of the token outputs into one vector
(PLM-NR / NRMS's additive attention, or the mean).

The production systems (PLM-NR, MTRec) put a pre-trained BERT here; no weights can be downloaded
where rankops is tested, and the recipes' planted titles are short bags of topic words, so a one- or
two-layer encoder of width 32-64 learns them from the clicks (and the auxiliary tasks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rankops.nn.embedding_bag import EmbeddingBagCollection, EmbeddingBagConfig
from rankops.nn.pooling import make_pooling
from rankops.nn.self_attention import TransformerBlock


def padded_tokens(values: Tensor, offsets: Tensor, max_len: int, pad: int = 0) -> Tensor:
    """Jagged token lists (``values [nnz]``, ``offsets [B+1]``, e.g. one feature of a
    KeyedJaggedTensor) as ``[B, max_len]``, in order, cut at ``max_len``, padded with ``pad``."""
    if max_len < 1:
        raise ValueError(f"padded_tokens: max_len must be >= 1, got {max_len}")
    B = offsets.numel() - 1
    lengths = (offsets[1:] - offsets[:-1]).clamp(max=max_len)
    pos = torch.arange(max_len, device=values.device)
    at = (offsets[:-1, None] + pos[None, :]).clamp(max=max(values.numel() - 1, 0))  # [B, max_len]
    keep = pos[None, :] < lengths[:, None]
    if values.numel() == 0:
        return torch.full((B, max_len), pad, dtype=values.dtype, device=values.device)
    return torch.where(keep, values[at], pad)


class TextEncoder(nn.Module):
    """``tokens [N, T] -> [N, D]``: a title's token ids to one vector.

    ``h_0 = E[tokens] + P[:T]`` (``E`` the ``vocab_size x D`` token table, looked up with
    ``rankops.batched_embedding_bag``; ``P`` learned positions), ``h_k = TransformerBlock_k(h_{k-1})``
    over each title's valid tokens, ``out = pool(h_K)`` (``pooling``: ``"attention"``, additive
    attention with a learned query, or ``"mean"``).

    Token id ``pad`` (default 0, MIND's convention) is padding and must come after a title's
    tokens; a title of only padding encodes to ``pool`` of nothing: zeros.

    Args:
        vocab_size: token ids in ``[0, vocab_size)``.
        embed_dim: D (divisible by ``num_heads``).
        max_len: the longest title (positions); longer inputs raise.
        num_layers: transformer blocks (0: pooled token embeddings, a bag of words).
        num_heads, ffn_dim, dropout: of each block.
        pooling: ``"attention"`` or ``"mean"`` over the token outputs.
    Example::

        enc = TextEncoder(vocab_size=30000, embed_dim=64, max_len=30)
        news = enc(titles[N, 30])                                   # [N, 64]
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, max_len: int = 32, num_layers: int = 1,
                 num_heads: int = 2, ffn_dim: int | None = None, dropout: float = 0.0, pooling: str = "attention",
                 pad: int = 0):
        super().__init__()
        if vocab_size < 2 or max_len < 1 or num_layers < 0:
            raise ValueError(f"rankops.nn.TextEncoder: need vocab_size >= 2, max_len >= 1, num_layers >= 0, got "
                             f"{vocab_size}, {max_len}, {num_layers}")
        self.vocab_size, self.embed_dim, self.max_len, self.pad = vocab_size, embed_dim, max_len, pad
        self.tokens = EmbeddingBagCollection([EmbeddingBagConfig("token", vocab_size, embed_dim, "sum", ["token"])])
        self.positions = nn.Parameter(torch.randn(max_len, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.pool = make_pooling(pooling, embed_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"rankops.nn.TextEncoder: tokens must be [N, T] with T <= max_len {self.max_len}, got "
                             f"{tuple(tokens.shape)}")
        if tokens.is_floating_point():
            raise TypeError(f"rankops.nn.TextEncoder: tokens must be integer ids, got {tokens.dtype}")
        N, T = tokens.shape
        valid = tokens != self.pad
        lengths = valid.sum(1)
        # one bag per token, weight 0 at padding: static shapes, padding rows contribute nothing
        off = torch.arange(N * T + 1, device=tokens.device)
        w = self.tokens.weights[0]
        h = self.tokens.lookup("token", tokens.reshape(-1), off, valid.reshape(-1).to(w.dtype)).view(N, T, -1)
        h = h + self.positions[:T]
        for block in self.blocks:
            h = block(h, lengths)
        return self.pool(h, lengths=lengths)
