"""DCN and DCN-V2 cross layers: full rank, low rank, and DCN's vector (v1) form.

Each is a public torch op (``torch.ops.rankops.cross_layer`` etc.) with a fake implementation and
an autograd formula, so it runs under torch.compile(fullgraph=True) and torch.export.

The full-rank and low-rank forwards also return the pre-activation ``p = xl @ W.T + b`` (and the
low-rank projection ``t = xl @ v.T``) when ``save`` is set: the backward needs ``p`` for
``d x0 = g * p``, and recomputing it would cost one more GEMM than eager PyTorch does. The public
functions set ``save`` only when autograd will need it, so inference writes ``out`` alone (on a GPU
the forward is memory-bound: x0 and xl in, out out). The backward ops are custom ops of their own;
they are not differentiable (no double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rankops.ops import _checks, _declare

# CUDA kernels (cuBLASLt GEMMs + one fused elementwise pass each way, csrc/cuda/cross.cu) for the
# full-rank and low-rank layers and stacks; the v1 ops have none (Triton serves them on a GPU).
_impls = _declare.backends("rankops.ops.cross",
                           cuda=("cross_layer", "cross_net", "cross_layer_lowrank", "cross_net_lowrank"))


def _needs_grad(*ts: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _check_pair(op: str, x0, xl) -> tuple[int, int]:
    _checks.tensor(op, "x0", x0, 2, "[batch, in_dim]")
    _checks.floating(op, "x0", x0)
    _checks.tensor(op, "xl", xl, 2, "[batch, in_dim]")
    if xl.shape != x0.shape:
        raise ValueError(f"rankops.{op}: xl has shape {tuple(xl.shape)} but x0 has {tuple(x0.shape)}; they must match")
    return x0.shape[0], x0.shape[1]


def _check_shape(op: str, name: str, t, shape: tuple[int, ...], dims: str) -> None:
    _checks.tensor(op, name, t, len(shape), dims)
    if tuple(t.shape) != shape:
        raise ValueError(f"rankops.{op}: {name} must have shape {shape} {dims}, got {tuple(t.shape)}")


def _check_common(op: str, x0: Tensor, **others: Tensor) -> None:
    _checks.same_dtype(op, "x0", x0, **others)
    _checks.same_device(op, "x0", x0, **others)


# ---------------------------------------------------------------------------------------------
# DCN-V2 full rank


def _layer_backward(grad: Tensor, x0: Tensor, xl: Tensor, weight: Tensor, p: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def _layer_fake(x0, xl, weight, bias, save):
    return _declare.like(x0), (_declare.like(x0) if save else x0.new_empty(0))


@_declare.op("cross_layer", impls=_impls, outputs=("out", "p"), grads=("x0", "xl", "weight", "bias"),
             recompute="save", fake=_layer_fake, backward=_layer_backward,
             backward_fake=lambda grad, x0, xl, weight, p: (_declare.like(x0), _declare.like(xl), _declare.like(weight),
                                                           weight.new_empty(weight.shape[0])))
def _layer(x0: Tensor, xl: Tensor, weight: Tensor, bias: Tensor, save: bool) -> tuple[Tensor, Tensor]: ...


def cross_layer(x0: Tensor, xl: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """DCN-V2 cross layer (full rank).

    ``out = x0 * (xl @ weight.T + bias) + xl``, i.e. ``out[b,j] = x0[b,j] * (sum_k W[j,k] xl[b,k] + b[j]) + xl[b,j]``.

    Args:
        x0: ``[B, N]`` the cross network's input, fp32 / fp16 / bf16 (accumulated in fp32).
        xl: ``[B, N]`` this layer's input (x0 for the first layer).
        weight: ``[N, N]`` (TorchRec ``kernels[l]``, DeepCTR ``kernels[l]`` with 'matrix').
        bias: ``[N]``.
    Returns:
        ``[B, N]`` in x0's dtype.
    """
    op = "cross_layer"
    B, N = _check_pair(op, x0, xl)
    _check_shape(op, "weight", weight, (N, N), "[in_dim, in_dim]")
    _check_shape(op, "bias", bias, (N,), "[in_dim]")
    _check_common(op, x0, xl=xl, weight=weight, bias=bias)
    return _layer(x0, xl, weight, bias, _needs_grad(x0, xl, weight, bias))[0]


# ---------------------------------------------------------------------------------------------
# DCN-V2 full rank, L layers stacked in one op


def row_stride(N: int) -> int:
    """Row stride of cross_net's saved activations: N rounded up to 16 elements (aligned rows made
    the CPU GEMMs ~1.3x faster at N = 429; see csrc/cpu/cross.cpp)."""
    return (N + 15) // 16 * 16


def _net_backward(grad: Tensor, x0: Tensor, weight: Tensor, xs: Tensor, ps: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor]: ...


def _net_fake(x0, weight, bias, save):
    out = _declare.like(x0)
    if not save:
        return out, x0.new_empty(0), x0.new_empty(0)
    (B, N), L = x0.shape, weight.shape[0]
    return out, x0.new_empty(L - 1, B, row_stride(N)), x0.new_empty(L, B, row_stride(N))


@_declare.op("cross_net", impls=_impls, outputs=("out", "xs", "ps"), grads=("x0", "weight", "bias"),
             recompute="save", fake=_net_fake, backward=_net_backward,
             backward_fake=lambda grad, x0, weight, xs, ps: (_declare.like(x0), _declare.like(weight),
                                                            weight.new_empty(weight.shape[0], weight.shape[1])))
def _net(x0: Tensor, weight: Tensor, bias: Tensor, save: bool) -> tuple[Tensor, Tensor, Tensor]: ...


def cross_net(x0: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """L stacked DCN-V2 cross layers (full rank) in one op: ``x_{l+1} = x0 * (x_l @ weight[l].T + bias[l]) + x_l``
    with ``x_0 = x0``; returns ``x_L``. The same as L calls of :func:`cross_layer`, with fewer
    temporaries and passes (the CPU kernel keeps the activations in reused buffers and sums dx0 in
    the backward's elementwise pass).

    Args:
        x0: ``[B, N]``, fp32 / fp16 / bf16 (accumulated in fp32).
        weight: ``[L, N, N]``, L >= 1 (TorchRec ``kernels`` stacked).
        bias: ``[L, N]``.
    Returns:
        ``[B, N]`` in x0's dtype.
    """
    op = "cross_net"
    _checks.tensor(op, "x0", x0, 2, "[batch, in_dim]")
    _checks.floating(op, "x0", x0)
    _checks.tensor(op, "weight", weight, 3, "[num_layers, in_dim, in_dim]")
    L, N = weight.shape[0], x0.shape[1]
    if L < 1:
        raise ValueError(f"rankops.{op}: weight must hold at least one layer, got shape {tuple(weight.shape)}")
    _check_shape(op, "weight", weight, (L, N, N), "[num_layers, in_dim, in_dim]")
    _check_shape(op, "bias", bias, (L, N), "[num_layers, in_dim]")
    _check_common(op, x0, weight=weight, bias=bias)
    return _net(x0, weight, bias, _needs_grad(x0, weight, bias))[0]


# ---------------------------------------------------------------------------------------------
# DCN (v1) and low-rank stacks in one op each


def _check_stack(op: str, x0, **params: Tensor) -> tuple[int, int]:
    _checks.tensor(op, "x0", x0, 2, "[batch, in_dim]")
    _checks.floating(op, "x0", x0)
    for name, t in params.items():
        _checks.tensor(op, name, t)
    first = next(iter(params.values()))
    L, N = (first.shape[0] if first.dim() else 0), x0.shape[1]
    if L < 1:
        raise ValueError(f"rankops.{op}: the parameters must hold at least one layer, got shape {tuple(first.shape)}")
    _check_common(op, x0, **params)
    return L, N


def _net_v1_backward(grad: Tensor, x0: Tensor, w: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


@_declare.op("cross_net_v1", impls=_impls, grads=("x0", "w", "bias"), fake=lambda x0, w, bias: _declare.like(x0),
             backward=_net_v1_backward,
             backward_fake=lambda grad, x0, w, bias: (_declare.like(x0), _declare.like(w), _declare.like(bias)))
def _net_v1(x0: Tensor, w: Tensor, bias: Tensor) -> Tensor: ...


def cross_net_v1(x0: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    """L stacked DCN (v1) cross layers in one op: ``x_{l+1} = x0 * (x_l @ w[l])[:, None] + bias[l] + x_l``
    with ``x_0 = x0``; returns ``x_L``. The same as L calls of :func:`cross_layer_v1`; the CPU
    kernel runs all L layers on a row while it is in cache and saves nothing for the backward,
    which recomputes the layers' inputs the same way (one read of x0 and grad, one write of dx0).

    Args:
        x0: ``[B, N]``, fp32 / fp16 / bf16 (accumulated in fp32).
        w: ``[L, N]``, L >= 1 (the layers' weight vectors stacked).
        bias: ``[L, N]``.
    Returns:
        ``[B, N]`` in x0's dtype.
    """
    op = "cross_net_v1"
    L, N = _check_stack(op, x0, w=w, bias=bias)
    _check_shape(op, "w", w, (L, N), "[num_layers, in_dim]")
    _check_shape(op, "bias", bias, (L, N), "[num_layers, in_dim]")
    return _net_v1(x0, w, bias)


def _net_lowrank_backward(grad: Tensor, x0: Tensor, u: Tensor, v: Tensor, xs: Tensor, ts: Tensor, ps: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def _net_lowrank_fake(x0, u, v, bias, save):
    if not save:
        return _declare.like(x0), x0.new_empty(0), x0.new_empty(0), x0.new_empty(0)
    (B, N), (L, _, r) = x0.shape, u.shape
    return _declare.like(x0), x0.new_empty(L - 1, B, N), x0.new_empty(L, B, r), x0.new_empty(L, B, N)


@_declare.op("cross_net_lowrank", impls=_impls, outputs=("out", "xs", "ts", "ps"), grads=("x0", "u", "v", "bias"),
             recompute="save", fake=_net_lowrank_fake, backward=_net_lowrank_backward,
             backward_fake=lambda grad, x0, u, v, xs, ts, ps: (_declare.like(x0), _declare.like(u), _declare.like(v),
                                                              u.new_empty(u.shape[0], u.shape[1])))
def _net_lowrank(x0: Tensor, u: Tensor, v: Tensor, bias: Tensor, save: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def cross_net_lowrank(x0: Tensor, u: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """L stacked DCN-V2 low-rank cross layers in one op:
    ``x_{l+1} = x0 * ((x_l @ v[l].T) @ u[l].T + bias[l]) + x_l`` with ``x_0 = x0``; returns ``x_L``.
    The same as L calls of :func:`cross_layer_lowrank`, with the activations written straight into
    the saved stacks and dx0 summed inside the backward.

    Args:
        x0: ``[B, N]``, fp32 / fp16 / bf16 (accumulated in fp32).
        u: ``[L, N, r]`` (TorchRec ``W_kernels`` stacked), L >= 1, r >= 1.
        v: ``[L, r, N]`` (TorchRec ``V_kernels`` stacked).
        bias: ``[L, N]``.
    Returns:
        ``[B, N]`` in x0's dtype.
    """
    op = "cross_net_lowrank"
    L, N = _check_stack(op, x0, u=u, v=v, bias=bias)
    _checks.tensor(op, "u", u, 3, "[num_layers, in_dim, rank]")
    r = u.shape[2]
    if r < 1:
        raise ValueError(f"rankops.{op}: rank must be >= 1, got u of shape {tuple(u.shape)} (rank 0)")
    _check_shape(op, "u", u, (L, N, r), "[num_layers, in_dim, rank]")
    _check_shape(op, "v", v, (L, r, N), "[num_layers, rank, in_dim]")
    _check_shape(op, "bias", bias, (L, N), "[num_layers, in_dim]")
    return _net_lowrank(x0, u, v, bias, _needs_grad(x0, u, v, bias))[0]


# ---------------------------------------------------------------------------------------------
# DCN-V2 low rank


def _lowrank_backward(grad: Tensor, x0: Tensor, xl: Tensor, u: Tensor, v: Tensor, t: Tensor, p: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]: ...


def _lowrank_fake(x0, xl, u, v, bias, save):
    out = _declare.like(x0)
    if not save:
        return out, x0.new_empty(0), x0.new_empty(0)
    return out, x0.new_empty(x0.shape[0], u.shape[1]), _declare.like(out)


@_declare.op("cross_layer_lowrank", impls=_impls, outputs=("out", "t", "p"), grads=("x0", "xl", "u", "v", "bias"),
             recompute="save", fake=_lowrank_fake, backward=_lowrank_backward,
             backward_fake=lambda grad, x0, xl, u, v, t, p: (_declare.like(x0), _declare.like(xl), _declare.like(u),
                                                            _declare.like(v), u.new_empty(u.shape[0])))
def _lowrank(x0: Tensor, xl: Tensor, u: Tensor, v: Tensor, bias: Tensor, save: bool
             ) -> tuple[Tensor, Tensor, Tensor]: ...


def cross_layer_lowrank(x0: Tensor, xl: Tensor, u: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """DCN-V2 low-rank cross layer.

    ``out = x0 * ((xl @ v.T) @ u.T + bias) + xl``: the full-rank layer with ``W = u @ v``.

    Args:
        x0, xl: ``[B, N]``, fp32 / fp16 / bf16.
        u: ``[N, r]`` (TorchRec ``W_kernels[l]``), r >= 1.
        v: ``[r, N]`` (TorchRec ``V_kernels[l]``).
        bias: ``[N]``.
    Returns:
        ``[B, N]`` in x0's dtype.
    """
    op = "cross_layer_lowrank"
    B, N = _check_pair(op, x0, xl)
    _checks.tensor(op, "u", u, 2, "[in_dim, rank]")
    _checks.tensor(op, "v", v, 2, "[rank, in_dim]")
    r = u.shape[1]
    if r < 1:
        raise ValueError(f"rankops.{op}: rank must be >= 1, got u of shape {tuple(u.shape)} (rank 0)")
    _check_shape(op, "u", u, (N, r), "[in_dim, rank]")
    _check_shape(op, "v", v, (r, N), "[rank, in_dim]")
    _check_shape(op, "bias", bias, (N,), "[in_dim]")
    _check_common(op, x0, xl=xl, u=u, v=v, bias=bias)
    return _lowrank(x0, xl, u, v, bias, _needs_grad(x0, xl, u, v, bias))[0]


# ---------------------------------------------------------------------------------------------
# DCN (v1): rank one, weight vector


def _v1_backward(grad: Tensor, x0: Tensor, xl: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


@_declare.op("cross_layer_v1", impls=_impls, grads=("x0", "xl", "w", "bias"),
             fake=lambda x0, xl, w, bias: _declare.like(x0), backward=_v1_backward,
             backward_fake=lambda grad, x0, xl, w: (_declare.like(x0), _declare.like(xl), _declare.like(w),
                                                    _declare.like(w)))
def _v1(x0: Tensor, xl: Tensor, w: Tensor, bias: Tensor) -> Tensor: ...


def cross_layer_v1(x0: Tensor, xl: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    """DCN (v1) cross layer.

    ``out = x0 * (xl @ w)[:, None] + bias + xl`` (memory-bound: one dot product per row).

    Args:
        x0, xl: ``[B, N]``, fp32 / fp16 / bf16.
        w: ``[N]`` (TorchRec / DeepCTR ``kernels[l]`` of shape ``[N, 1]``, flattened).
        bias: ``[N]``.
    Returns:
        ``[B, N]`` in x0's dtype.
    """
    op = "cross_layer_v1"
    B, N = _check_pair(op, x0, xl)
    _check_shape(op, "w", w, (N,), "[in_dim]")
    _check_shape(op, "bias", bias, (N,), "[in_dim]")
    _check_common(op, x0, xl=xl, w=w, bias=bias)
    return _v1(x0, xl, w, bias)


__all__ = ["cross_layer", "cross_layer_lowrank", "cross_layer_v1", "cross_net", "cross_net_lowrank", "cross_net_v1"]
