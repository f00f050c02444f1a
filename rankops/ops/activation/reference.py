"""Pure-PyTorch ground truth for the activation family: Dice with batch statistics (DIN's
activation in training), in fp32, cast to the input dtype at the end.

``dice`` is differentiable by autograd (the tests' and benchmarks' eager baseline);
``dice_backward`` is the explicit formula the kernels implement.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dice(x: Tensor, mask: Tensor, alpha: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """y = x (alpha + (1 - alpha) sigmoid((x - mean) / sqrt(var + eps))), mean and (biased) var per
    column over the rows where ``mask``; (y, mean, var), the statistics in fp32."""
    xf, w = x.float(), mask[:, None].float()
    n = w.sum().clamp_min(1.0)
    mean = (xf * w).sum(0) / n
    var = ((xf - mean).square() * w).sum(0) / n
    p = torch.sigmoid((xf - mean) * torch.rsqrt(var + eps))
    a = alpha.float()
    return (xf * (a + (1 - a) * p)).to(x.dtype), mean, var


def dice_backward(grad: Tensor, x: Tensor, mask: Tensor, alpha: Tensor, mean: Tensor, var: Tensor,
                  eps: float) -> tuple[Tensor, Tensor]:
    """(dx, dalpha), the gradient flowing through the statistics as BatchNorm's does:
    gz = g x (1 - alpha) p (1 - p),  dx = g (alpha + (1 - alpha) p) + r gz - [valid] r/n (sum gz + z sum gz z),
    dalpha = sum g x (1 - p), with z = (x - mean) r, r = 1 / sqrt(var + eps), n the valid rows."""
    xf, g, a = x.float(), grad.float(), alpha.float()
    valid = mask[:, None].float()
    n = valid.sum().clamp_min(1.0)
    r = torch.rsqrt(var.float() + eps)
    z = (xf - mean.float()) * r
    p = torch.sigmoid(z)
    gz = g * xf * (1 - a) * p * (1 - p)
    dx = g * (a + (1 - a) * p) + r * gz - valid * (r / n) * (gz.sum(0) + z * (gz * z).sum(0))
    return dx.to(x.dtype), (g * xf * (1 - p)).sum(0).to(alpha.dtype)
