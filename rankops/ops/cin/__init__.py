"""xDeepFM's Compressed Interaction Network layer, without the outer product.

``out[b,n,d] = sum_{h,i} W[n,h,i] * xk[b,h,d] * x0[b,i,d] + bias[n]``

Every public implementation (DeepCTR-Torch's einsum + Conv1d and its copies) forms
``Z[b,(h,i),d] = xk[b,h,d] * x0[b,i,d]``, B*H*M*D elements (2 GB in fp32 at B=4096, H=200,
M=39, D=16) and keeps it for the backward. Seen as a GEMM over the rows (b, d) with K = H*M, the
layer's A operand is Z; the kernels form Z a block at a time in cache (cpp) or in registers
(triton), forward and backward, and never store it.

Public torch op ``torch.ops.rankops.cin_layer`` with a fake implementation and an autograd formula
(torch.compile(fullgraph=True), torch.export); the backward is a custom op of its own, not itself
differentiable.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from rankops.ops import _checks, _declare

# CUDA kernels (csrc/cuda/cin.cu) and Triton; auto keeps Triton first on a GPU until a GPU run has
# measured the two (rankops/auto_order.json)
_impls = _declare.backends("rankops.ops.cin", cuda=("cin_layer",))


def _cin_backward(grad: Tensor, xk: Tensor, x0: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


@_declare.op("cin_layer", impls=_impls, grads=("xk", "x0", "weight", "bias"),
             fake=lambda xk, x0, weight, bias: xk.new_empty(xk.shape[0], weight.shape[0], xk.shape[2]),
             backward=_cin_backward,
             backward_fake=lambda grad, xk, x0, weight: (_declare.like(xk), _declare.like(x0), _declare.like(weight),
                                                         weight.new_empty(weight.shape[0])))
def _cin(xk: Tensor, x0: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor: ...


def cin_layer(xk: Tensor, x0: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """One CIN layer of xDeepFM.

    ``out[b,n,d] = sum_{h,i} weight[n,h,i] * xk[b,h,d] * x0[b,i,d] + bias[n]``

    Args:
        xk: ``[B, H, D]`` the previous layer's feature maps (x0 for the first layer).
        x0: ``[B, M, D]`` the field embeddings.
        weight: ``[Hn, H, M]``; DeepCTR's ``Conv1d(H*M, Hn, 1).weight`` is ``weight.reshape(Hn, H*M, 1)``.
        bias: ``[Hn]`` or None.
    Returns:
        ``[B, Hn, D]`` in xk's dtype (fp32 / fp16 / bf16, accumulated in fp32).
    """
    op = "cin_layer"
    _checks.tensor(op, "xk", xk, 3, "[batch, H, dim]")
    _checks.floating(op, "xk", xk)
    _checks.tensor(op, "x0", x0, 3, "[batch, M, dim]")
    _checks.tensor(op, "weight", weight, 3, "[H_next, H, M]")
    if x0.shape[0] != xk.shape[0] or x0.shape[2] != xk.shape[2]:
        raise ValueError(
            f"rankops.{op}: x0 has shape {tuple(x0.shape)} but xk has {tuple(xk.shape)}; batch (dim 0) and "
            "embedding dim (dim 2) must match"
        )
    H, M = xk.shape[1], x0.shape[1]
    if weight.shape[1:] != (H, M):
        raise ValueError(
            f"rankops.{op}: weight must have shape [H_next, {H}, {M}] for xk with H={H} and x0 with M={M}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1:
        raise ValueError(f"rankops.{op}: weight must have at least one output map (dim 0), got {tuple(weight.shape)}")
    if bias is not None:
        _checks.tensor(op, "bias", bias, 1, "[H_next]")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"rankops.{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    _checks.same_dtype(op, "xk", xk, x0=x0, weight=weight, bias=bias)
    _checks.same_device(op, "xk", xk, x0=x0, weight=weight, bias=bias)
    return _cin(xk, x0, weight, bias)


__all__ = ["cin_layer"]
