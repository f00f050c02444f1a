"""Pure-PyTorch ground truth for xDeepFM's CIN layer.

Plain, slow and obviously right: it DOES materialise the outer product
``Z[b, h, i, d] = xk[b, h, d] * x0[b, i, d]`` (as DeepCTR-Torch's einsum + Conv1d does), in fp32,
and casts to the input dtype at the end. The kernels are tested against it and never form Z.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cin_layer(xk: Tensor, x0: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    z = torch.einsum("bhd,bid->bhid", xk.float(), x0.float())
    out = torch.einsum("nhi,bhid->bnd", weight.float(), z)
    if bias is not None:
        out = out + bias.float()[None, :, None]
    return out.to(xk.dtype).contiguous()


def cin_layer_backward(
    grad: Tensor, xk: Tensor, x0: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g, xkf, x0f, wf = grad.float(), xk.float(), x0.float(), weight.float()
    z = torch.einsum("bhd,bid->bhid", xkf, x0f)
    dz = torch.einsum("nhi,bnd->bhid", wf, g)
    dxk = torch.einsum("bhid,bid->bhd", dz, x0f)
    dx0 = torch.einsum("bhid,bhd->bid", dz, xkf)
    dw = torch.einsum("bnd,bhid->nhi", g, z)
    # db is always returned (an op cannot return None); the autograd formula drops it without a bias
    db = g.sum((0, 2)).to(weight.dtype)
    return dxk.to(xk.dtype).contiguous(), dx0.to(x0.dtype).contiguous(), dw.to(weight.dtype).contiguous(), db
