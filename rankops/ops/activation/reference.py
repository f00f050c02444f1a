"""Pure-PyTorch ground truth for the activation family: Dice with batch statistics (DIN's
activation in training), in fp32, cast to the input dtype at the end.

``dice`` is differentiable by autograd (the tests' and benchmarks' eager baseline);
``dice_backward`` is the explicit formula the kernels implement.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dice(x: Tensor, mask: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor,
         eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """y = x (alpha + (1 - alpha) sigmoid(weight (x - mean) / sqrt(var + eps) + bias)), mean and
    (biased) var per column over the rows where ``mask``; (y, mean, var), the statistics in fp32."""
    xf, w = x.float(), mask[:, None].float()
    n = w.sum().clamp_min(1.0)
    mean = (xf * w).sum(0) / n
    var = ((xf - mean).square() * w).sum(0) / n
    p = torch.sigmoid((xf - mean) * torch.rsqrt(var + eps) * weight.float() + bias.float())
    a = alpha.float()
    return (xf * (a + (1 - a) * p)).to(x.dtype), mean, var


def dice_backward(grad: Tensor, x: Tensor, mask: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor, mean: Tensor,
                  var: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dalpha, dweight, dbias), the gradient flowing through the statistics as BatchNorm's does:
    gu = g x (1 - alpha) p (1 - p),  dx = g (alpha + (1 - alpha) p) + r w gu - [valid] r w / n (sum gu + z sum gu z),
    dalpha = sum g x (1 - p), dweight = sum gu z, dbias = sum gu, with z = (x - mean) r,
    r = 1 / sqrt(var + eps), p = sigmoid(w z + b), n the valid rows; the sums over every row."""
    xf, g, a, wf = x.float(), grad.float(), alpha.float(), weight.float()
    valid = mask[:, None].float()
    n = valid.sum().clamp_min(1.0)
    r = torch.rsqrt(var.float() + eps)
    z = (xf - mean.float()) * r
    p = torch.sigmoid(z * wf + bias.float())
    gu = g * xf * (1 - a) * p * (1 - p)
    s1, sz = gu.sum(0), (gu * z).sum(0)
    dx = g * (a + (1 - a) * p) + r * wf * gu - valid * (r * wf / n) * (s1 + z * sz)
    return (dx.to(x.dtype), (g * xf * (1 - p)).sum(0).to(alpha.dtype), sz.to(weight.dtype), s1.to(bias.dtype))
