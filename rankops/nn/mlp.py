"""The multi-layer perceptron every ranking model ends in (DeepCTR-Torch's ``DNN``, TorchRec's ``MLP``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

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
        return self.layers(x)


def masked_mean(seq: Tensor, lengths: Tensor) -> Tensor:
    """Mean over the first ``lengths[b]`` rows of ``seq [B, L, D]`` -> ``[B, D]`` (zeros for length 0)."""
    mask = (torch.arange(seq.shape[1], device=seq.device)[None, :] < lengths[:, None]).to(seq.dtype)
    total = torch.bmm(mask[:, None, :], seq)[:, 0]
    return total / lengths.clamp(min=1).to(seq.dtype)[:, None]
