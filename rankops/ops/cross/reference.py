"""Pure-PyTorch ground truth for the cross family (DCN and DCN-V2 cross layers).

Plain, slow and obviously right: computed in fp32, cast to the input dtype at the end.
The forwards return ``(out, saved)``: the intermediates the backward needs (empty tensors when
``save`` is False), mirroring the kernels' contract so that every backend is interchangeable.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EMPTY = torch.empty(0)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


# DCN-V2 full rank: out = x0 * p + xl,  p = xl @ W.T + b


def cross_layer(x0: Tensor, xl: Tensor, weight: Tensor, bias: Tensor, save: bool) -> tuple[Tensor, Tensor]:
    p = xl.float() @ weight.float().T + bias.float()
    out = (x0.float() * p + xl.float()).to(x0.dtype)
    return out, (p.to(x0.dtype) if save else _empty(x0))


def cross_layer_backward(
    grad: Tensor, x0: Tensor, xl: Tensor, weight: Tensor, p: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g, pf = grad.float(), p.float()
    dp = g * x0.float()
    dx0 = g * pf
    dxl = dp @ weight.float() + g
    dw = dp.T @ xl.float()
    db = dp.sum(0)
    return dx0.to(x0.dtype), dxl.to(xl.dtype), dw.to(weight.dtype), db.to(weight.dtype)


# L stacked full-rank layers: x_{l+1} = x0 * p_l + x_l, p_l = x_l @ W_l.T + b_l; saved: the inputs of
# layers 1..L-1 (xs) and every p_l (ps), rows padded to row_stride(N) with zeros (the kernels' layout)


def _padded(like: Tensor, n: int, rows: list[Tensor]) -> Tensor:
    from rankops.ops.cross import row_stride

    out = like.new_zeros(n, like.shape[0], row_stride(like.shape[1]))
    for i, r in enumerate(rows):
        out[i, :, : like.shape[1]] = r
    return out


def cross_net(x0: Tensor, weight: Tensor, bias: Tensor, save: bool) -> tuple[Tensor, Tensor, Tensor]:
    x0f, x = x0.float(), x0.float()
    xs, ps = [], []
    for l in range(weight.shape[0]):
        p = x @ weight[l].float().T + bias[l].float()
        if l:
            xs.append(x.to(x0.dtype))
        ps.append(p.to(x0.dtype))
        x = x0f * p + x
    if not save:
        return x.to(x0.dtype), _empty(x0), _empty(x0)
    return x.to(x0.dtype), _padded(x0, len(xs), xs), _padded(x0, len(ps), ps)


def cross_net_backward(grad: Tensor, x0: Tensor, weight: Tensor, xs: Tensor, ps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    N = x0.shape[1]
    g, x0f = grad.float(), x0.float()
    dx0 = torch.zeros_like(x0f)
    dw, db = torch.empty_like(weight), torch.empty(weight.shape[:2], dtype=weight.dtype, device=weight.device)
    for l in reversed(range(weight.shape[0])):
        xl = x0f if l == 0 else xs[l - 1, :, :N].float()
        dp = g * x0f
        dx0 += g * ps[l, :, :N].float()
        dw[l], db[l] = dp.T @ xl, dp.sum(0)
        g = dp @ weight[l].float() + g
    return (dx0 + g).to(x0.dtype), dw, db


# low rank: out = x0 * p + xl,  t = xl @ v.T  [B, r],  p = t @ u.T + b


def cross_layer_lowrank(
    x0: Tensor, xl: Tensor, u: Tensor, v: Tensor, bias: Tensor, save: bool
) -> tuple[Tensor, Tensor, Tensor]:
    t = xl.float() @ v.float().T
    p = t @ u.float().T + bias.float()
    out = (x0.float() * p + xl.float()).to(x0.dtype)
    if not save:
        return out, _empty(x0), _empty(x0)
    return out, t.to(x0.dtype), p.to(x0.dtype)


def cross_layer_lowrank_backward(
    grad: Tensor, x0: Tensor, xl: Tensor, u: Tensor, v: Tensor, t: Tensor, p: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = grad.float()
    dp = g * x0.float()
    dx0 = g * p.float()
    du = dp.T @ t.float()
    dt = dp @ u.float()
    dv = dt.T @ xl.float()
    dxl = dt @ v.float() + g
    db = dp.sum(0)
    return dx0.to(x0.dtype), dxl.to(xl.dtype), du.to(u.dtype), dv.to(v.dtype), db.to(u.dtype)


# DCN (v1): out = x0 * s[:, None] + b + xl,  s = xl @ w  [B]


def cross_layer_v1(x0: Tensor, xl: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    s = xl.float() @ w.float()
    return (x0.float() * s[:, None] + bias.float() + xl.float()).to(x0.dtype)


def cross_layer_v1_backward(
    grad: Tensor, x0: Tensor, xl: Tensor, w: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g, x0f, xlf, wf = grad.float(), x0.float(), xl.float(), w.float()
    s = xlf @ wf  # recomputed: one dot per row, cheaper than saving
    ds = (g * x0f).sum(1)
    dx0 = g * s[:, None]
    dxl = ds[:, None] * wf + g
    dw = xlf.T @ ds
    db = g.sum(0)
    return dx0.to(x0.dtype), dxl.to(xl.dtype), dw.to(w.dtype), db.to(w.dtype)
