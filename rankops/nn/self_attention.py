"""Self-attention over fields or behaviour sequences: AutoInt's interacting layer (Song et al.,
CIKM 2019) and BST's transformer block (Chen et al., DLP-KDD 2019), on
``torch.nn.functional.scaled_dot_product_attention`` (its fused kernels on CPU and GPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _heads(x: Tensor, h: int) -> Tensor:
    B, N, E = x.shape
    return x.view(B, N, h, E // h).transpose(1, 2)  # [B, h, N, E/h]


class InteractingLayer(nn.Module):
    """AutoInt: ``relu(MHSA(x) + W_res x)`` over field embeddings ``x [B, F, D] -> [B, F, att_dim]``.

    Each head attends over all fields with scaled dot products (``use_scaling``, as DeepCTR-Torch's
    option; AutoInt's paper does not scale). ``att_dim = head_num * att_embedding_size``.
    """

    def __init__(self, in_dim: int, att_embedding_size: int = 8, head_num: int = 2, use_res: bool = True,
                 use_scaling: bool = True):
        super().__init__()
        if head_num < 1 or att_embedding_size < 1:
            raise ValueError(f"rankops.nn.InteractingLayer: head_num and att_embedding_size must be >= 1, got "
                             f"{head_num}, {att_embedding_size}")
        self.head_num, self.use_scaling = head_num, use_scaling
        self.output_dim = att_embedding_size * head_num
        self.qkv = nn.Linear(in_dim, 3 * self.output_dim, bias=False)
        self.res = nn.Linear(in_dim, self.output_dim, bias=False) if use_res else None
        for p in self.parameters():
            nn.init.normal_(p, std=0.05)  # DeepCTR-Torch's init

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_heads(t, self.head_num) for t in self.qkv(x).chunk(3, -1))
        scale = None if self.use_scaling else 1.0
        o = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).flatten(2)  # [B, F, att_dim]
        if self.res is not None:
            o = o + self.res(x)
        return torch.relu(o)


class TransformerBlock(nn.Module):
    """BST's encoder block (post-norm): ``h = LN(x + drop(MHSA(x)))``, ``out = LN(h + drop(FFN(h)))``
    with ``FFN = W2 leaky_relu(W1 h)``; positions past a sample's length are masked as keys.

    Shapes: ``x [B, L, E]``, ``lengths [B]`` (valid prefix; None: all valid) -> ``[B, L, E]``.
    """

    def __init__(self, embed_dim: int, num_heads: int = 2, ffn_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"rankops.nn.TransformerBlock: embed_dim {embed_dim} must be divisible by num_heads "
                             f"{num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.norm1, self.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        ffn_dim = ffn_dim or 4 * embed_dim
        self.ffn = nn.Sequential(nn.Linear(embed_dim, ffn_dim), nn.LeakyReLU(), nn.Linear(ffn_dim, embed_dim))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        B, L, E = x.shape
        mask = None
        if lengths is not None:
            # a query row whose keys are all masked would give NaN: every row keeps position 0
            valid = torch.arange(L, device=x.device)[None, :] < lengths.clamp(min=1)[:, None]
            mask = valid[:, None, None, :]
        q, k, v = (_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, -1))
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop).transpose(1, 2).reshape(B, L, E)
        h = self.norm1(x + F.dropout(self.out(a), drop, self.training))
        return self.norm2(h + F.dropout(self.ffn(h), drop, self.training))
