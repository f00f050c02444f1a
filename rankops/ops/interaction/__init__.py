"""Feature interaction: the FM second-order term and DLRM's pairwise dot products.

Both are public torch ops (``torch.ops.rankops.fm_interaction`` / ``dot_interaction``) with a fake
implementation and an autograd formula, so they run under torch.compile(fullgraph=True) and
torch.export. The backward is a custom op of its own; it is not itself differentiable (no
double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rankops.ops import _checks, _dispatch

_REF = "rankops.ops.interaction.reference"
_TRITON = "rankops.ops.interaction.triton"
_NATIVE = "torch.ops:rankops_C"  # one schema, CPU and CUDA kernels registered per dispatch key


def _impls(name: str) -> dict[str, str]:
    return {
        "reference": f"{_REF}:{name}",
        "cpp": f"{_NATIVE}.{name}",
        "cuda": f"{_NATIVE}.{name}",
        "triton": f"{_TRITON}:{name}",
    }


def _check_x(op: str, x) -> Tensor:
    _checks.tensor(op, "x", x, 3, "[batch, fields, dim]")
    _checks.floating(op, "x", x)
    return x


# ---------------------------------------------------------------------------------------------
# FM


@_dispatch.custom_op("rankops::fm_interaction")
def _fm_interaction(x: Tensor, reduce: bool) -> Tensor:
    return _dispatch.call("fm_interaction", _impls("fm_interaction"), x.device, x.contiguous(), reduce)


@_fm_interaction.register_fake
def _(x, reduce):
    return x.new_empty(x.shape[0], 1 if reduce else x.shape[2])


@_dispatch.custom_op("rankops::fm_interaction_backward")
def _fm_interaction_backward(grad: Tensor, x: Tensor, reduce: bool) -> Tensor:
    return _dispatch.call(
        "fm_interaction", _impls("fm_interaction_backward"), x.device, grad.contiguous(), x.contiguous(), reduce
    )


@_fm_interaction_backward.register_fake
def _(grad, x, reduce):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fm_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.reduce = inputs[1]


def _fm_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _dispatch.invoke(_fm_interaction_backward, grad, x, ctx.reduce), None


_fm_interaction.register_autograd(_fm_backward, setup_context=_fm_setup)


def fm_interaction(x: Tensor, reduce: bool = True) -> Tensor:
    """Factorization-machine second-order term.

    ``out[b, d] = 0.5 * ((sum_f x[b,f,d])^2 - sum_f x[b,f,d]^2)``, summed over d when ``reduce``.

    Args:
        x: ``[B, F, D]`` field embeddings, fp32 / fp16 / bf16 (accumulated in fp32).
        reduce: sum over D (DeepFM's FM output, ``[B, 1]``) or keep it (``[B, D]``, as in NFM's
            bi-interaction pooling).
    Returns:
        ``[B, 1]`` or ``[B, D]`` in x's dtype.
    """
    _check_x("fm_interaction", x)
    return _dispatch.invoke(_fm_interaction, x, bool(reduce))


# ---------------------------------------------------------------------------------------------
# DLRM dot


def num_pairs(num_fields: int, self_interaction: bool = False) -> int:
    return num_fields * (num_fields + 1) // 2 if self_interaction else num_fields * (num_fields - 1) // 2


@_dispatch.custom_op("rankops::dot_interaction")
def _dot_interaction(x: Tensor, self_interaction: bool) -> Tensor:
    return _dispatch.call("dot_interaction", _impls("dot_interaction"), x.device, x.contiguous(), self_interaction)


@_dot_interaction.register_fake
def _(x, self_interaction):
    return x.new_empty(x.shape[0], num_pairs(x.shape[1], self_interaction))


@_dispatch.custom_op("rankops::dot_interaction_backward")
def _dot_interaction_backward(grad: Tensor, x: Tensor, self_interaction: bool) -> Tensor:
    return _dispatch.call(
        "dot_interaction",
        _impls("dot_interaction_backward"),
        x.device,
        grad.contiguous(),
        x.contiguous(),
        self_interaction,
    )


@_dot_interaction_backward.register_fake
def _(grad, x, self_interaction):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _dot_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.self_interaction = inputs[1]


def _dot_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _dispatch.invoke(_dot_interaction_backward, grad, x, ctx.self_interaction), None


_dot_interaction.register_autograd(_dot_backward, setup_context=_dot_setup)


def dot_interaction(x: Tensor, self_interaction: bool = False) -> Tensor:
    """DLRM pairwise dot interaction.

    ``out[b, p] = <x[b,i], x[b,j]>`` for the row-major lower triangle of field pairs: i > j
    ((1,0), (2,0), (2,1), (3,0), ...), or i >= j with ``self_interaction``.

    Args:
        x: ``[B, F, D]``, F >= 2 (F >= 1 with self_interaction), fp32 / fp16 / bf16.
    Returns:
        ``[B, F*(F-1)/2]`` (``[B, F*(F+1)/2]`` with self_interaction) in x's dtype.
    """
    _check_x("dot_interaction", x)
    if x.shape[1] < (1 if self_interaction else 2):
        raise ValueError(
            f"rankops.dot_interaction: x needs at least {1 if self_interaction else 2} fields "
            f"(dim 1) to form a pair, got shape {tuple(x.shape)}"
        )
    return _dispatch.invoke(_dot_interaction, x, bool(self_interaction))
