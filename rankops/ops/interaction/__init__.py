"""Feature interaction: the FM second-order term and DLRM's pairwise dot products.

Both are public torch ops (``torch.ops.rankops.fm_interaction`` / ``dot_interaction``) with a fake
implementation and an autograd formula, so they run under torch.compile(fullgraph=True) and
torch.export. The backward is a custom op of its own; it is not itself differentiable (no
double backward).
"""

from __future__ import annotations

from torch import Tensor

from rankops.ops import _checks, _declare

_impls = _declare.backends("rankops.ops.interaction", cuda=True)


def _check_x(op: str, x) -> Tensor:
    _checks.tensor(op, "x", x, 3, "[batch, fields, dim]")
    _checks.floating(op, "x", x)
    return x


# ---------------------------------------------------------------------------------------------
# FM


def _fm_backward(grad: Tensor, x: Tensor, reduce: bool) -> Tensor: ...


@_declare.op("fm_interaction", impls=_impls, grads=("x",),
             fake=lambda x, reduce: x.new_empty(x.shape[0], 1 if reduce else x.shape[2]),
             backward=_fm_backward, backward_fake=lambda grad, x, reduce: _declare.like(x))
def _fm(x: Tensor, reduce: bool) -> Tensor: ...


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
    return _fm(x, bool(reduce))


# ---------------------------------------------------------------------------------------------
# DLRM dot


def num_pairs(num_fields: int, self_interaction: bool = False) -> int:
    return num_fields * (num_fields + 1) // 2 if self_interaction else num_fields * (num_fields - 1) // 2


def _dot_backward(grad: Tensor, x: Tensor, self_interaction: bool) -> Tensor: ...


@_declare.op("dot_interaction", impls=_impls, grads=("x",),
             fake=lambda x, self_interaction: x.new_empty(x.shape[0], num_pairs(x.shape[1], self_interaction)),
             backward=_dot_backward, backward_fake=lambda grad, x, self_interaction: _declare.like(x))
def _dot(x: Tensor, self_interaction: bool) -> Tensor: ...


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
    return _dot(x, bool(self_interaction))
