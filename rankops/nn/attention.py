"""Attention layers over user behaviour sequences: multi-head target attention and DIN's
activation unit."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rankops.ops.attention import ACTIVATIONS, din_attention, jagged_target_attention, target_attention


class MultiHeadTargetAttention(nn.Module):
    """Candidates (targets) attend over a user's behaviour sequence, with learned projections.

    ``out = W_o concat_h(attention(W_q^h query, W_k^h keys, W_v^h keys))`` where each head attends
    over the user's valid keys only (``rankops.target_attention``; a user with no behaviour gets
    ``W_o 0 + b_o``). The same parameters as ``torch.nn.MultiheadAttention`` (one in-projection
    ``[3E, E]`` when kdim = vdim = E), so weights load either way.

    Args:
        embed_dim: E, the query (candidate) width and the output width.
        num_heads: H; head dim is E / H.
        kdim, vdim: widths of the keys and values (default E).
        bias: biases in the projections.
    Shapes:
        query ``[B, Q, E]`` (Q candidates per user) or ``[B, E]`` (one);
        keys ``[B, L, kdim]`` padded with ``lengths [B]``, or jagged ``[S, kdim]`` with ``offsets [B+1]``;
        values default to keys (``[B, L, vdim]`` / ``[S, vdim]``).
        returns ``[B, Q, E]`` (``[B, E]`` for a 2-D query).

    Example::

        mhta = MultiHeadTargetAttention(64, 4)
        out = mhta(cand[B, 10, 64], seq[B, 200, 64], lengths=seq_len)      # [B, 10, 64]
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        kw = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None, *, lengths: Tensor | None = None,
                offsets: Tensor | None = None) -> Tensor:
        if (lengths is None) == (offsets is None):
            raise ValueError("MultiHeadTargetAttention: pass exactly one of lengths (padded keys) or offsets (jagged)")
        values = keys if values is None else values
        single = query.dim() == 2
        if single:
            query = query[:, None, :]
        B, Q, _ = query.shape
        H, dh = self.num_heads, self.head_dim
        q = self.q_proj(query).view(B, Q, H, dh).transpose(1, 2)  # [B, H, Q, dh]
        if offsets is None:
            L = keys.shape[1]
            k = self.k_proj(keys).view(B, L, H, dh).transpose(1, 2)  # [B, H, L, dh]
            v = self.v_proj(values).view(B, L, H, dh).transpose(1, 2)
            o = target_attention(q, k, v, lengths)
        else:
            S = keys.shape[0]
            k = self.k_proj(keys).view(S, H, dh)
            v = self.v_proj(values).view(S, H, dh)
            o = jagged_target_attention(q, k, v, offsets)
        out = self.out_proj(o.transpose(1, 2).reshape(B, Q, self.embed_dim))
        return out[:, 0] if single else out

    def load_from_torch(self, mha: nn.MultiheadAttention) -> "MultiHeadTargetAttention":
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (batch_first or not)."""
        E = self.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.split(E, 0)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for lin, w in ((self.q_proj, wq), (self.k_proj, wk), (self.v_proj, wv)):
                lin.weight.copy_(w)
            if mha.in_proj_bias is not None and self.q_proj.bias is not None:
                for lin, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.split(E, 0)):
                    lin.bias.copy_(b)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and self.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        return self


class DINAttention(nn.Module):
    """DIN's local activation unit with weighted-sum pooling (Zhou et al., KDD 2018).

    For each behaviour ``k`` of a user and the candidate ``q``:
    ``a = w_out . act(W2 act(W1 [q, k, q-k, q*k] + b1) + b2) + b_out`` and
    ``out = sum_l a_l k_l`` over the user's valid behaviours (``normalize=True``: softmax weights).
    Runs on ``rankops.din_attention``, which never builds the ``[B, L, 4E]`` concatenation.

    Args:
        embed_dim: E, the width of q and of the keys.
        hidden: one or two hidden widths (DIN's default ``(80, 40)``).
        activation: ``"dice"`` (DIN's), ``"prelu"`` or ``"sigmoid"`` (DeepCTR's default).
        normalize: softmax the scores over the valid keys (DIN itself does not).
        momentum, eps: Dice's running statistics (like BatchNorm: batch statistics in training,
            running ones in eval).
    Shapes: query ``[B, E]``, keys ``[B, L, E]``, lengths ``[B]`` -> ``[B, E]``.
    """

    def __init__(self, embed_dim: int, hidden: tuple[int, ...] = (80, 40), activation: str = "dice",
                 normalize: bool = False, momentum: float = 0.1, eps: float = 1e-8, device=None, dtype=None):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if len(hidden) not in (1, 2):
            raise ValueError(f"DINAttention supports one or two hidden layers (DIN uses (80, 40)), got {hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        kw = dict(device=device, dtype=dtype)
        self.embed_dim, self.hidden, self.activation = embed_dim, hidden, activation
        self.normalize, self.momentum, self.eps = normalize, momentum, eps
        widths = (4 * embed_dim,) + hidden
        self.layers = nn.ModuleList(nn.Linear(i, o, **kw) for i, o in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(hidden[-1], 1, **kw)
        # PReLU starts at torch's 0.25; Dice's alpha at 0 (DeepCTR), i.e. a smooth gated identity.
        init = 0.25 if activation == "prelu" else 0.0
        self.alphas = nn.ParameterList(
            nn.Parameter(torch.full((h,), init, **kw)) for h in (hidden if activation != "sigmoid" else ())
        )
        for i, h in enumerate(hidden):
            self.register_buffer(f"running_mean{i}", torch.zeros(h, **kw))
            self.register_buffer(f"running_var{i}", torch.ones(h, **kw))
        for lin in list(self.layers) + [self.out]:
            nn.init.xavier_uniform_(lin.weight, gain=1.0 / math.sqrt(2.0))
            nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, keys: Tensor, lengths: Tensor) -> Tensor:
        w = [(lin.weight, lin.bias) for lin in self.layers] + [(None, None)] * (2 - len(self.layers))
        alphas = tuple(self.alphas) + (None,) * (2 - len(self.alphas))
        stats = None
        batch_stats: list | None = None
        if self.activation == "dice":
            if self.training:
                batch_stats = []
            else:
                stats = tuple((getattr(self, f"running_mean{i}"), getattr(self, f"running_var{i}"))
                              for i in range(len(self.hidden)))
        out = din_attention(query, keys, lengths, w[0][0], w[0][1], w[1][0], w[1][1], self.out.weight, self.out.bias,
                            activation=self.activation, normalize=self.normalize, alphas=alphas, dice_stats=stats,
                            eps=self.eps, _batch_stats=batch_stats)
        if batch_stats:
            with torch.no_grad():
                for i, (mean, var) in enumerate(batch_stats):
                    getattr(self, f"running_mean{i}").lerp_(mean.to(query.dtype), self.momentum)
                    getattr(self, f"running_var{i}").lerp_(var.to(query.dtype), self.momentum)
        return out
