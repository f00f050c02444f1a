"""Activations with batch-wide state: Dice (Zhou et al., DIN, 2018) on batch statistics.

Dice gates its input by where it falls in the batch's distribution, BatchNorm's:
``y = x (alpha + (1 - alpha) sigmoid(weight (x - mean) / sqrt(var + eps) + bias))``, mean and var
per column over the valid rows, the gradient flowing through them. The paper's Dice (and the zoo's)
has no affine (weight 1, bias 0); DeepCTR-Torch's is a BatchNorm1d with its affine pair. Composed from PyTorch ops a
training forward + backward makes ~30 passes over the activations; the C++ kernels make four, the
Triton ones five (the variance about the mean in a pass of its own).
Running statistics (inference) need no kernel of their own: the gate is then elementwise.

Public torch op ``torch.ops.rankops.dice`` (fake, autograd formula: torch.compile(fullgraph=True),
torch.export); backends: cpp on CPU, triton on a GPU (triton.py), the reference (PyTorch) anywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rankops.ops import _checks, _declare


def _impls(name: str) -> dict[str, str]:
    return {"reference": f"rankops.ops.activation.reference:{name}", "cpp": f"{_declare.NATIVE}.{name}",
            "triton": f"rankops.ops.activation.triton:{name}"}


def _dice_backward(grad: Tensor, x: Tensor, mask: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor, mean: Tensor,
                   var: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def _stat(x: Tensor) -> Tensor:
    return x.new_empty(x.shape[1], dtype=torch.float32)


@_declare.op("dice", impls=_impls, outputs=("out", "mean", "var"), grads=("x", "alpha", "weight", "bias"),
             fake=lambda x, mask, alpha, weight, bias, eps: (_declare.like(x), _stat(x), _stat(x)),
             backward=_dice_backward,
             backward_fake=lambda grad, x, mask, alpha, weight, bias, mean, var, eps: (
                 _declare.like(x), _declare.like(alpha), _declare.like(weight), _declare.like(bias)))
def _dice(x: Tensor, mask: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor,
          eps: float) -> tuple[Tensor, Tensor, Tensor]: ...


def dice(x: Tensor, mask: Tensor, alpha: Tensor, eps: float = 1e-8, *, weight: Tensor | None = None,
         bias: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Dice on batch statistics.

    Args:
        x: ``[N, H]`` pre-activations (fp32 / fp16 / bf16, computed in fp32).
        mask: ``[N]`` bool, the rows that enter the statistics (DIN: the valid behaviours); every
            row is gated.
        alpha: ``[H]`` the slope below the gate.
        weight, bias: ``[H]`` BatchNorm's affine inside the gate (None: 1 and 0, the paper's Dice).
    Returns:
        ``(y [N, H] in x's dtype, mean [H], var [H])``, the statistics fp32 (biased variance, for
        the caller's running averages); y is differentiable in x, alpha, weight and bias.
    """
    op = "dice"
    _checks.tensor(op, "x", x, 2, "[rows, columns]")
    _checks.floating(op, "x", x)
    _checks.tensor(op, "mask", mask, 1, "[rows]")
    _checks.tensor(op, "alpha", alpha, 1, "[columns]")
    if mask.dtype != torch.bool or mask.shape[0] != x.shape[0]:
        raise ValueError(f"rankops.{op}: mask must be a bool tensor of {x.shape[0]} rows, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    if alpha.shape[0] != x.shape[1]:
        raise ValueError(f"rankops.{op}: alpha must have {x.shape[1]} entries (x's columns), got {tuple(alpha.shape)}")
    H = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.shape[0] != H or not t.is_floating_point()):
            raise ValueError(f"rankops.{op}: {name} must be a floating [{H}] tensor (x's columns), got {t.dtype} "
                             f"{tuple(t.shape)}")
    if weight is None:
        weight = torch.ones(H, dtype=alpha.dtype, device=x.device)
    if bias is None:
        bias = torch.zeros(H, dtype=alpha.dtype, device=x.device)
    _checks.same_device(op, "x", x, mask=mask, alpha=alpha, weight=weight, bias=bias)
    return _dice(x, mask, alpha, weight, bias, float(eps))


__all__ = ["dice"]
