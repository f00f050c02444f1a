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


# Stacks of L v1 / low-rank layers as one op: the layers composed. The composition takes the layer
# functions, so triton.py stacks its layer kernels with the same code. The v1 stack saves nothing
# (its backward recomputes the layers' inputs: a dot per row and layer); the low-rank one saves the
# inputs of layers 1..L-1 (xs [L-1, B, N]), every t_l (ts [L, B, r]) and p_l (ps [L, B, N]).


def net_v1(layer, x0: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    x = x0
    for l in range(w.shape[0]):
        x = layer(x0, x, w[l], bias[l])
    return x


def net_v1_backward(layer, layer_backward, grad: Tensor, x0: Tensor, w: Tensor, bias: Tensor):
    xs = [x0]
    for l in range(w.shape[0] - 1):
        xs.append(layer(x0, xs[-1], w[l], bias[l]))
    dx0 = torch.zeros_like(x0, dtype=torch.float32)
    dw, db = torch.empty_like(w), torch.empty_like(bias)
    g = grad
    for l in reversed(range(w.shape[0])):
        d, g, dw[l], db[l] = layer_backward(g, x0, xs[l], w[l])
        dx0 += d.float()
    return (dx0 + g.float()).to(x0.dtype), dw, db


def cross_net_v1(x0: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    return net_v1(cross_layer_v1, x0.float(), w.float(), bias.float()).to(x0.dtype)


def cross_net_v1_backward(grad: Tensor, x0: Tensor, w: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dx0, dw, db = net_v1_backward(cross_layer_v1, cross_layer_v1_backward, grad.float(), x0.float(), w.float(),
                                  bias.float())
    return dx0.to(x0.dtype), dw.to(w.dtype), db.to(w.dtype)


def net_lowrank(layer, x0: Tensor, u: Tensor, v: Tensor, bias: Tensor, save: bool):
    x, xs, ts, ps = x0, [], [], []
    L = u.shape[0]
    for l in range(L):
        x_next, t, p = layer(x0, x, u[l], v[l], bias[l], save)
        if save:
            ts.append(t)
            ps.append(p)
            if l < L - 1:
                xs.append(x_next)
        x = x_next
    if not save:
        return x, _empty(x0), _empty(x0), _empty(x0)
    xs = torch.stack(xs) if xs else x0.new_empty(0, *x0.shape)
    return x, xs, torch.stack(ts), torch.stack(ps)


def net_lowrank_backward(layer_backward, grad: Tensor, x0: Tensor, u: Tensor, v: Tensor, xs: Tensor, ts: Tensor,
                         ps: Tensor):
    dx0 = torch.zeros_like(x0, dtype=torch.float32)
    du, dv = torch.empty_like(u), torch.empty_like(v)
    db = torch.empty(u.shape[0], u.shape[1], dtype=u.dtype, device=u.device)
    g = grad
    for l in reversed(range(u.shape[0])):
        xl = x0 if l == 0 else xs[l - 1]
        d, g, du[l], dv[l], db[l] = layer_backward(g, x0, xl, u[l], v[l], ts[l], ps[l])
        dx0 += d.float()
    return (dx0 + g.float()).to(x0.dtype), du, dv, db


def cross_net_lowrank(x0: Tensor, u: Tensor, v: Tensor, bias: Tensor, save: bool):
    out, xs, ts, ps = net_lowrank(cross_layer_lowrank, x0.float(), u.float(), v.float(), bias.float(), save)
    return tuple(t.to(x0.dtype) for t in (out, xs, ts, ps))


def cross_net_lowrank_backward(grad: Tensor, x0: Tensor, u: Tensor, v: Tensor, xs: Tensor, ts: Tensor, ps: Tensor):
    f = [t.float() for t in (grad, x0, u, v, xs, ts, ps)]
    dx0, du, dv, db = net_lowrank_backward(cross_layer_lowrank_backward, *f)
    return dx0.to(x0.dtype), du.to(u.dtype), dv.to(v.dtype), db.to(u.dtype)
