"""The multi-layer perceptron every ranking model ends in (DeepCTR-Torch's ``DNN``, TorchRec's ``MLP``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rankops import backend
from rankops.ops import _declare, _dispatch

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
               "silu": nn.SiLU, "linear": nn.Identity}
NORMS = (None, "batch", "layer")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"rankops.nn: unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """``x [B, in_dim] -> [B, hidden_units[-1]]``: per layer ``dropout(act(norm(W x + b)))``.

    Args:
        in_dim: input width.
        hidden_units: the layers' widths (DeepCTR-Torch's ``dnn_hidden_units``); empty: identity.
        activation: one of ``relu prelu sigmoid tanh gelu silu linear``.
        dropout: dropout probability after each layer.
        norm: ``None``, ``"batch"`` (DeepCTR's ``use_bn``) or ``"layer"``, between the product and the
            activation.
    Kernels start at ``nn.Linear``'s default, biases at zero.

    Example::

        mlp = MLP(128, (256, 128), dropout=0.1)
        h = mlp(torch.randn(32, 128))      # [32, 128]
    """

    def __init__(self, in_dim: int, hidden_units: Sequence[int] = (256, 128), activation: str = "relu",
                 dropout: float = 0.0, norm: str | None = None, device=None, dtype=None):
        super().__init__()
        hidden_units = [int(h) for h in hidden_units]
        if in_dim < 1 or any(h < 1 for h in hidden_units):
            raise ValueError(f"rankops.nn.MLP: widths must be >= 1, got in_dim={in_dim}, hidden_units={hidden_units}")
        if norm not in NORMS:
            raise ValueError(f"rankops.nn.MLP: norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"rankops.nn.MLP: dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.hidden_units = in_dim, hidden_units
        kw = dict(device=device, dtype=dtype)
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden_units:
            lin = nn.Linear(width, h, **kw)
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            if norm == "batch":
                layers.append(nn.BatchNorm1d(h, **kw))
            elif norm == "layer":
                layers.append(nn.LayerNorm(h, **kw))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.layers = nn.Sequential(*layers)

    @property
    def output_dim(self) -> int:
        return self.hidden_units[-1] if self.hidden_units else self.in_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"rankops.nn.MLP: input width {x.shape[-1]} != in_dim {self.in_dim}")
        for i, layer in enumerate(self.layers):  # (a slice self.layers[1:] builds a new Sequential per call)
            # the first: nn.Linear's product, its input gradient aligned where that pays (linear)
            x = linear(x, layer.weight, layer.bias) if i == 0 else layer(x)
        return x


_ALIGN = 16  # fp32 elements in a 64-byte cache line


def aligns(x: Tensor, weight: Tensor) -> bool:
    """Whether ``x W^T``'s input gradient should take ``_AlignedGradLinear``: an odd width of at least 64
    (narrower ones are cheap either way) in training, outside autocast and the reference backend (what a user writes
    without rankops; torch.compile of the reference, ``tracing_reference``, traces nn.Linear too)."""
    n = weight.shape[1]
    if n % _ALIGN == 0 or n < 64 or not x.requires_grad or torch.is_autocast_enabled(x.device.type):
        return False  # (under autocast the product runs in bf16 / fp16 and its backward would not)
    if torch.compiler.is_compiling():
        return not _declare.TRACING_REFERENCE
    return _dispatch.eager(x, weight) and backend.current() != "reference"


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x [.., n] W^T + b`` as nn.Linear computes it, its input gradient into rows padded to whole
    cache lines where ``aligns`` says so (``_AlignedGradLinear``)."""
    if not aligns(x, weight):
        return torch.nn.functional.linear(x, weight, bias)
    out = _AlignedGradLinear.apply(x.reshape(-1, weight.shape[1]), weight, bias)
    return out.view(*x.shape[:-1], out.shape[-1])


class _AlignedGradLinear(torch.autograd.Function):
    """``x W^T + b`` (nn.Linear's product and gradients), the input's gradient ``g W`` written with
    rows padded to whole cache lines. Ranking models' MLP inputs are rarely that wide (26 x 16 + 13
    = 429 Criteo features): ``[4096, K] x [K, 429]`` ran 1.3-1.9x slower in MKL on the 2-core EPYC
    than into rows of 432 (K = 1024 .. 256), the largest product of a DCN-V2 / DeepFM / MMoE step.
    The weight's gradient and the forward (inner dimension 429) run as fast either way."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.addmm(bias, x, weight.t()) if bias is not None else x.mm(weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            n = weight.shape[1]
            padded = torch.nn.functional.pad(weight, (0, -n % _ALIGN))  # [out, n + pad], zeros on the right
            gx = grad.mm(padded)[:, :n]
        if ctx.needs_input_grad[1]:
            gw = grad.t().mm(x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def masked_mean(seq: Tensor, lengths: Tensor) -> Tensor:
    """Mean over the first ``lengths[b]`` rows of ``seq [B, L, D]`` -> ``[B, D]`` (zeros for length 0)."""
    mask = (torch.arange(seq.shape[1], device=seq.device)[None, :] < lengths[:, None]).to(seq.dtype)
    total = torch.bmm(mask[:, None, :], seq)[:, 0]
    return total / lengths.clamp(min=1).to(seq.dtype)[:, None]
