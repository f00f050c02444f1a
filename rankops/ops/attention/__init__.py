"""Target attention over user behaviour sequences (DIN / TWIN style), padded and jagged.

Each of Q candidate items of a user attends over that user's behaviour sequence:

    out[b,h,i] = sum_{j < len_b} softmax_j(scale * <q[b,h,i], k[b,h,j]>) v[b,h,j]

The public ops (``torch.ops.rankops.target_attention`` / ``jagged_target_attention``) return
``(out, lse)`` with ``lse`` the fp32 log-sum-exp of each query row, which the backward uses to
recompute the probabilities without storing them (FlashAttention's scheme). They carry a fake
implementation and an autograd formula, so they run under torch.compile(fullgraph=True) and
torch.export. The backward is a custom op of its own (no double backward).

Input values are validated inside the op (lengths within [0, L], offsets starting at 0,
non-decreasing, ending at S): that costs one host synchronisation per call on a GPU, and it is
what turns an out-of-range length into a ValueError instead of a read past the buffer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankops.ops import _checks, _dispatch

_REF = "rankops.ops.attention.reference"
_TRITON = "rankops.ops.attention.triton"
_NATIVE = "torch.ops:rankops_C"  # one schema, CPU and CUDA kernels registered per dispatch key


def _impls(name: str, cuda: bool = False) -> dict[str, str]:
    impls = {"reference": f"{_REF}:{name}", "cpp": f"{_NATIVE}.{name}", "triton": f"{_TRITON}:{name}"}
    if cuda:
        impls["cuda"] = f"{_NATIVE}.{name}"
    return impls


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_qkv(op: str, q, k, v, jagged: bool) -> None:
    _checks.tensor(op, "q", q, 4, "[batch, heads, queries, head_dim]")
    kv_dims = "[total_keys, heads, head_dim]" if jagged else "[batch, heads, keys, head_dim]"
    _checks.tensor(op, "k", k, 3 if jagged else 4, kv_dims)
    _checks.tensor(op, "v", v, 3 if jagged else 4, kv_dims)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.floating(op, name, t)
    _checks.same_dtype(op, "q", q, k=k, v=v)
    _checks.same_device(op, "q", q, k=k, v=v)
    if k.shape != v.shape:
        raise ValueError(f"rankops.{op}: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    B, H, _, d = q.shape
    if k.shape[-1] != d:
        raise ValueError(f"rankops.{op}: head dims differ: q has {d} (shape {tuple(q.shape)}), k has {k.shape[-1]}")
    kh = k.shape[1]
    if kh != H:
        raise ValueError(f"rankops.{op}: q has {H} heads but k has {kh}")
    if not jagged and k.shape[0] != B:
        raise ValueError(f"rankops.{op}: q has batch {B} but k has batch {k.shape[0]}")


def _scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"rankops: scale must be finite, got {scale}")
    return scale


def _check_lengths_values(lengths: Tensor, L: int) -> None:
    if lengths.numel() == 0:
        return
    lo, hi = torch.aminmax(lengths)
    lo, hi = int(lo), int(hi)  # one sync; see the module docstring
    if lo < 0:
        raise ValueError(f"rankops.target_attention: lengths must be >= 0, got a length of {lo}")
    if hi > L:
        raise ValueError(f"rankops.target_attention: lengths must be <= L = {L} (k.shape[2]), got a length of {hi}")


def _check_offsets_values(offsets: Tensor, S: int) -> None:
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise ValueError(f"rankops.jagged_target_attention: offsets must start at 0, got {first}")
    if last != S:
        raise ValueError(
            f"rankops.jagged_target_attention: offsets[-1] = {last} is inconsistent with the {S} packed keys "
            f"(k.shape[0]); they must be equal"
        )
    if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("rankops.jagged_target_attention: offsets must be non-decreasing")


# ---------------------------------------------------------------------------------------------
# padded


@torch.library.custom_op("rankops::target_attention", mutates_args=())
def _target_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    _check_lengths_values(lengths, k.shape[2])
    return _dispatch.call(
        "target_attention",
        _impls("target_attention"),
        q.device,
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        lengths.to(torch.int64).contiguous(),
        scale,
    )


@_target_attention.register_fake
def _(q, k, v, lengths, scale):
    B, H, Q, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(B, H, Q, dtype=torch.float32)


@torch.library.custom_op("rankops::target_attention_backward", mutates_args=())
def _target_attention_backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _dispatch.call(
        "target_attention",
        _impls("target_attention_backward"),
        q.device,
        grad.to(q.dtype).contiguous(),
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        lengths.to(torch.int64).contiguous(),
        out.contiguous(),
        lse.contiguous(),
        scale,
    )


@_target_attention_backward.register_fake
def _(grad, q, k, v, lengths, out, lse, scale):
    c = torch.contiguous_format
    return torch.empty_like(q, memory_format=c), torch.empty_like(k, memory_format=c), torch.empty_like(v, memory_format=c)


def _setup(ctx, inputs, output):
    q, k, v, lengths, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, lengths, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, lengths, out, lse = ctx.saved_tensors
    dq, dk, dv = _target_attention_backward(grad_out, q, k, v, lengths, out, lse, ctx.scale)
    return dq, dk, dv, None, None


_target_attention.register_autograd(_backward, setup_context=_setup)


def target_attention(
    q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, scale: float | None = None, return_lse: bool = False
):
    """Multi-head target attention over padded behaviour sequences.

    ``out[b,h,i] = sum_{j < lengths[b]} softmax_j(scale * q[b,h,i] . k[b,h,j]) v[b,h,j]``; a sample
    with ``lengths[b] == 0`` gets zeros (and zero gradients). Keys past ``lengths[b]`` are never read.

    Args:
        q: ``[B, H, Q, d]`` the Q candidates of each user (Q = 1 in DIN, up to hundreds in TWIN-style
            retrieval); fp32 / fp16 / bf16.
        k, v: ``[B, H, L, d]`` the user's behaviour sequence, padded to L; same dtype as q.
        lengths: ``[B]`` int32/int64 valid keys per sample, each in ``[0, L]``.
        scale: multiplies the scores; ``1/sqrt(d)`` by default.
        return_lse: also return ``lse[B, H, Q]`` (fp32 log-sum-exp of each row's scaled scores,
            ``-inf`` for an empty sample).
    Returns:
        ``[B, H, Q, d]`` in q's dtype (and lse when asked). Differentiable in q, k and v.
    """
    op = "target_attention"
    _check_qkv(op, q, k, v, jagged=False)
    _checks.tensor(op, "lengths", lengths, 1, "[batch]")
    _checks.integer(op, "lengths", lengths)
    _checks.same_device(op, "q", q, lengths=lengths)
    if lengths.shape[0] != q.shape[0]:
        raise ValueError(f"rankops.{op}: lengths has {lengths.shape[0]} entries but the batch is {q.shape[0]}")
    out, lse = _target_attention(q, k, v, lengths, _scale(scale, q.shape[-1]))
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# jagged


@torch.library.custom_op("rankops::jagged_target_attention", mutates_args=())
def _jagged_target_attention(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    _check_offsets_values(offsets, k.shape[0])
    return _dispatch.call(
        "jagged_target_attention",
        _impls("jagged_target_attention"),
        q.device,
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        offsets.to(torch.int64).contiguous(),
        scale,
    )


@_jagged_target_attention.register_fake
def _(q, k, v, offsets, scale):
    B, H, Q, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(B, H, Q, dtype=torch.float32)


@torch.library.custom_op("rankops::jagged_target_attention_backward", mutates_args=())
def _jagged_target_attention_backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _dispatch.call(
        "jagged_target_attention",
        _impls("jagged_target_attention_backward"),
        q.device,
        grad.to(q.dtype).contiguous(),
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        offsets.to(torch.int64).contiguous(),
        out.contiguous(),
        lse.contiguous(),
        scale,
    )


@_jagged_target_attention_backward.register_fake
def _(grad, q, k, v, offsets, out, lse, scale):
    c = torch.contiguous_format
    return torch.empty_like(q, memory_format=c), torch.empty_like(k, memory_format=c), torch.empty_like(v, memory_format=c)


def _jagged_backward(ctx, grad_out, grad_lse):
    q, k, v, offsets, out, lse = ctx.saved_tensors
    dq, dk, dv = _jagged_target_attention_backward(grad_out, q, k, v, offsets, out, lse, ctx.scale)
    return dq, dk, dv, None, None


_jagged_target_attention.register_autograd(_jagged_backward, setup_context=_setup)


def jagged_target_attention(
    q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scale: float | None = None, return_lse: bool = False
):
    """Multi-head target attention over a jagged (packed) batch of behaviour sequences.

    Sample b owns the packed rows ``offsets[b] : offsets[b+1]`` of k and v (FlashAttention's varlen
    layout, ``cu_seqlens`` = offsets):
    ``out[b,h,i] = sum_{offsets[b] <= s < offsets[b+1]} softmax_s(scale * q[b,h,i] . k[s,h]) v[s,h]``.

    Args:
        q: ``[B, H, Q, d]``; fp32 / fp16 / bf16.
        k, v: ``[S, H, d]`` packed keys and values, S = offsets[B].
        offsets: ``[B + 1]`` int32/int64, starting at 0, non-decreasing, ending at S.
        scale: ``1/sqrt(d)`` by default.
        return_lse: also return the fp32 ``lse[B, H, Q]``.
    Returns:
        ``[B, H, Q, d]`` in q's dtype; an empty sample gets zeros. Differentiable in q, k and v.
    """
    op = "jagged_target_attention"
    _check_qkv(op, q, k, v, jagged=True)
    _checks.tensor(op, "offsets", offsets, 1, "[batch + 1]")
    _checks.integer(op, "offsets", offsets)
    _checks.same_device(op, "q", q, offsets=offsets)
    if offsets.shape[0] != q.shape[0] + 1:
        raise ValueError(f"rankops.{op}: offsets has {offsets.shape[0]} entries; the batch of {q.shape[0]} needs B+1")
    out, lse = _jagged_target_attention(q, k, v, offsets, _scale(scale, q.shape[-1]))
    return (out, lse) if return_lse else out
