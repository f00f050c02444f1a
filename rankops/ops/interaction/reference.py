"""Pure-PyTorch ground truth for the interaction family. Plain, slow and obviously right:
computed in fp32, cast to the input dtype at the end. Also differentiable by autograd, which the
tests and benchmarks use as the eager baseline."""

from __future__ import annotations

import torch


def fm_interaction(x: torch.Tensor, reduce: bool) -> torch.Tensor:
    xf = x.float()
    s = xf.sum(1)  # [B, D]
    out = 0.5 * (s * s - (xf * xf).sum(1))
    if reduce:
        out = out.sum(1, keepdim=True)
    return out.to(x.dtype)


def fm_interaction_backward(grad: torch.Tensor, x: torch.Tensor, reduce: bool) -> torch.Tensor:
    xf = x.float()
    s = xf.sum(1, keepdim=True)  # [B, 1, D]
    g = grad.float()[:, None, :]  # [B, 1, 1] when reduced, else [B, 1, D]
    return (g * (s - xf)).to(x.dtype)


def tril_indices(num_fields: int, self_interaction: bool, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major lower triangle: (1,0),(2,0),(2,1),... (with the diagonal when self_interaction)."""
    ij = torch.tril_indices(num_fields, num_fields, offset=0 if self_interaction else -1, device=device)
    return ij[0], ij[1]


def dot_interaction(x: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    xf = x.float()
    i, j = tril_indices(x.shape[1], self_interaction, x.device)
    return torch.bmm(xf, xf.transpose(1, 2))[:, i, j].to(x.dtype)


def dot_interaction_backward(grad: torch.Tensor, x: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    B, F, _ = x.shape
    i, j = tril_indices(F, self_interaction, x.device)
    g = torch.zeros(B, F, F, dtype=torch.float32, device=x.device)
    g[:, i, j] = grad.float()
    return torch.bmm(g + g.transpose(1, 2), x.float()).to(x.dtype)
