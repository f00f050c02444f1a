"""Target attention over user behaviour sequences (DIN / TWIN style), padded and jagged.

Each of Q candidate items of a user attends over that user's behaviour sequence:

    out[b,h,i] = sum_{j < len_b} softmax_j(scale * <q[b,h,i], k[b,h,j]>) v[b,h,j]

The public ops (``torch.ops.rankops.target_attention`` / ``jagged_target_attention``) return
``(out, lse)`` with ``lse`` the fp32 log-sum-exp of each query row, which the backward uses to
recompute the probabilities without storing them (FlashAttention's scheme). They carry a fake
implementation and an autograd formula, so they run under torch.compile(fullgraph=True) and
torch.export. The backward is a custom op of its own (no double backward).

Backends: ``reference`` (reference.py), ``cpp`` (csrc/cpu/attention.cpp), ``triton`` (triton.py;
serves CUDA tensors), ``cuda`` (csrc/cuda/attention.cu: split-KV forward, each key tile loaded once
for all of a user's candidates). No GPU has measured CUDA against Triton yet, so on a GPU ``auto``
runs Triton (rankops/auto_order.json) until one does.

Input values are validated inside the op (lengths within [0, L], offsets starting at 0,
non-decreasing, ending at S): that costs one host synchronisation per call on a GPU, and it is
what turns an out-of-range length into a ValueError instead of a read past the buffer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankops.ops import _checks, _declare, _dispatch
from rankops.ops.activation import dice
from rankops.ops.attention.packed import din_packed_scores, packs

_NATIVE = _declare.NATIVE
_impls = _declare.backends("rankops.ops.attention", cuda=("target_attention", "jagged_target_attention"))


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


def _out_lse(q: Tensor) -> tuple[Tensor, Tensor]:
    B, H, Q, _ = q.shape
    return _declare.like(q), q.new_empty(B, H, Q, dtype=torch.float32)


def _backward_prepare(grad, q, k, v, lengths, out, lse, scale):  # lengths or offsets
    return _declare.contiguous(grad.to(q.dtype), q, k, v, lengths.to(torch.int64), out, lse, scale)


# the padded and the jagged op: what they have in common, then each one's own
_ATTENTION = dict(impls=_impls, outputs=("out", "lse"), grads=("q", "k", "v"), backward_prepare=_backward_prepare)


def _prepare(check_values):
    """The kernels' arguments: the lengths or offsets checked (one sync), as int64, all contiguous."""

    def prepare(q, k, v, index, scale):
        check_values(index, k)
        return _declare.contiguous(q, k, v, index.to(torch.int64), scale)

    return prepare


def _padded_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, out: Tensor, lse: Tensor,
                     scale: float) -> tuple[Tensor, Tensor, Tensor]: ...


def _jagged_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, out: Tensor, lse: Tensor,
                     scale: float) -> tuple[Tensor, Tensor, Tensor]: ...


@_declare.op("target_attention", **_ATTENTION, backward=_padded_backward,
             prepare=_prepare(lambda lengths, k: _check_lengths_values(lengths, k.shape[2])),
             fake=lambda q, k, v, lengths, scale: _out_lse(q),
             backward_fake=lambda grad, q, k, v, lengths, out, lse, scale: tuple(map(_declare.like, (q, k, v))))
def _padded(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, scale: float) -> tuple[Tensor, Tensor]: ...


@_declare.op("jagged_target_attention", **_ATTENTION, backward=_jagged_backward,
             prepare=_prepare(lambda offsets, k: _check_offsets_values(offsets, k.shape[0])),
             fake=lambda q, k, v, offsets, scale: _out_lse(q),
             backward_fake=lambda grad, q, k, v, offsets, out, lse, scale: tuple(map(_declare.like, (q, k, v))))
def _jagged(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scale: float) -> tuple[Tensor, Tensor]: ...


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
    out, lse = _padded(q, k, v, lengths, _scale(scale, q.shape[-1]))
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# jagged


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
    out, lse = _jagged(q, k, v, offsets, _scale(scale, q.shape[-1]))
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# DIN's activation unit, fused

ACTIVATIONS = ("sigmoid", "prelu", "dice")


def _din_first_layer(q: Tensor, keys: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """h1[b, l] = W1 [q, k, q - k, q * k] + b1 without the concatenation.

    With W1 = [Wa | Wb | Wc | Wd] (four [H1, d] blocks):
        W1 [q, k, q - k, q * k] = (Wa + Wc) q + (Wb - Wc + Wd diag(q)) k = c_q + M_q k,
    so each sample needs c_q [H1] and M_q [H1, d] once, and each key one [H1, d] x [d] product.
    Memory: B*H1*d for M_q instead of B*L*4d for the concatenation.
    """
    d = q.shape[-1]
    wa, wb, wc, wd = w1.split(d, dim=1)
    c = q @ (wa + wc).T + b1  # [B, H1]
    m = (wb - wc)[None] + wd[None] * q[:, None, :]  # [B, H1, d]
    return c[:, None, :] + torch.bmm(keys, m.transpose(1, 2))  # [B, L, H1]


def din_attention(
    q: Tensor,
    keys: Tensor,
    lengths: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor | None,
    b2: Tensor | None,
    w_out: Tensor,
    b_out: Tensor,
    activation: str = "sigmoid",
    normalize: bool = False,
    alphas: tuple[Tensor | None, Tensor | None] = (None, None),
    dice_stats: tuple | None = None,
    eps: float = 1e-8,
    _batch_stats: list | None = None,
) -> Tensor:
    """DIN's local activation unit and weighted-sum pooling (Zhou et al., 2018), fused.

    For every valid key ``k = keys[b, l]`` (``l < lengths[b]``) a small MLP scores the pair
    (q[b], k) from ``[q, k, q - k, q * k]``::

        h1 = act(W1 [q, k, q-k, q*k] + b1)        W1: [H1, 4d]   (computed as c_q + M_q k, see below)
        h2 = act(W2 h1 + b2)                       W2: [H2, H1]   (omit w2/b2 for one hidden layer)
        a  = w_out . h2 + b_out                    w_out: [1, H2] or [H2], b_out: [1]
        out[b] = sum_l a[b, l] keys[b, l]          (DIN does not normalise the weights)

    With ``normalize=True`` the weights are ``softmax_l(a)`` over the valid keys instead. A sample
    with length 0 gets zeros. The first layer never builds the ``[B, L, 4d]`` concatenation:
    ``W1 [q, k, q-k, q*k] = (Wa + Wc) q + (Wb - Wc + Wd diag(q)) k`` for ``W1 = [Wa|Wb|Wc|Wd]``.

    Activations (``activation``): ``"sigmoid"``; ``"prelu"``: ``max(s, 0) + alpha * min(s, 0)``;
    ``"dice"``: ``p s + (1 - p) alpha s`` with ``p = sigmoid((s - mean) / sqrt(var + eps))``, where
    (mean, var) per hidden unit come from ``dice_stats = ((mean1, var1), (mean2, var2))`` (inference,
    running statistics) or, when None, from the batch's valid keys (training). PReLU and Dice take
    their per-unit slopes from ``alphas = (alpha1[H1], alpha2[H2])``.

    Args:
        q: ``[B, d]`` target item embedding; keys: ``[B, L, d]`` behaviour sequence; lengths ``[B]``
            int32/int64 in ``[0, L]``. fp32 / fp16 / bf16 (computed in fp32).
    Returns:
        ``[B, d]`` in q's dtype; differentiable in q, keys and every parameter.
    """
    op = "din_attention"
    _checks.tensor(op, "q", q, 2, "[batch, dim]")
    _checks.tensor(op, "keys", keys, 3, "[batch, keys, dim]")
    _checks.floating(op, "q", q)
    _checks.floating(op, "keys", keys)
    _checks.same_dtype(op, "q", q, keys=keys)
    _checks.tensor(op, "lengths", lengths, 1, "[batch]")
    _checks.integer(op, "lengths", lengths)
    B, L, d = keys.shape
    if q.shape != (B, d):
        raise ValueError(f"rankops.{op}: q {tuple(q.shape)} must be [B, d] = {(B, d)} to match keys {tuple(keys.shape)}")
    if lengths.shape[0] != B:
        raise ValueError(f"rankops.{op}: lengths has {lengths.shape[0]} entries but the batch is {B}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"rankops.{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if w1.dim() != 2 or w1.shape[1] != 4 * d:
        raise ValueError(f"rankops.{op}: w1 must be [H1, 4*d] = [H1, {4 * d}], got {tuple(w1.shape)}")
    if (w2 is None) != (b2 is None):
        raise ValueError(f"rankops.{op}: give both w2 and b2, or neither (one hidden layer)")
    hidden = [w1.shape[0]] + ([w2.shape[0]] if w2 is not None else [])
    if w2 is not None and (w2.dim() != 2 or w2.shape[1] != w1.shape[0]):
        raise ValueError(f"rankops.{op}: w2 must be [H2, H1={w1.shape[0]}], got {tuple(w2.shape)}")
    if w_out.numel() != hidden[-1]:
        raise ValueError(f"rankops.{op}: w_out must hold {hidden[-1]} weights (the last hidden width), got {tuple(w_out.shape)}")
    if activation in ("prelu", "dice") and any(a is None for a in alphas[: len(hidden)]):
        raise ValueError(f"rankops.{op}: activation {activation!r} needs alphas for every hidden layer")
    if not torch.compiler.is_compiling():  # a value check would break the graph; masking stays in bounds
        _check_lengths_values(lengths, L)

    params = [w1, b1, w2, b2, w_out, b_out, *alphas]
    if _din_native_ok(q, keys, params, activation, dice_stats):
        return _din(*_din_flat(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, activation, normalize, alphas,
                               dice_stats, eps))

    mask = torch.arange(L, device=keys.device)[None, :] < lengths.to(torch.int64)[:, None]  # [B, L]
    qf = q.float()
    layers = [(w1, b1)] + ([(w2, b2)] if w2 is not None else [])
    if activation == "dice" and dice_stats is None and packs(keys):
        # the valid keys only (padding never read, even NaN), pooled with index_add
        s, rows, k = din_packed_scores(qf, keys, mask, layers, alphas, w_out, b_out, eps, _batch_stats)
        if normalize:
            weight = _pooling_weights(s.new_zeros(B * L).index_put((rows,), s).view(B, L), mask, normalize)
            s = weight.reshape(-1).index_select(0, rows)
        return qf.new_zeros(B, d).index_add_(0, rows // L, s[:, None] * k).to(q.dtype)
    kf = keys.float().masked_fill(~mask[..., None], 0.0)  # padding never leaks, even NaN
    score = _din_padded_scores(qf, kf, mask, layers, activation, alphas, dice_stats, w_out, b_out, eps, _batch_stats)
    weight = _pooling_weights(score, mask, normalize)
    return torch.bmm(weight[:, None, :], kf).squeeze(1).to(q.dtype)


def _pooling_weights(score: Tensor, mask: Tensor, normalize: bool) -> Tensor:
    """DIN's pooling weights ``[B, L]`` from the scores: the scores themselves (DIN does not normalise), or
    their softmax over the valid keys; zero at the padding."""
    if not normalize:
        return score.masked_fill(~mask, 0.0)
    score = score.masked_fill(~mask, float("-inf"))
    m = score.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(score - m)
    return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def _din_padded_scores(qf, kf, mask, layers, activation, alphas, dice_stats, w_out, b_out, eps, batch_stats):
    """The unit's score ``[B, L]`` of every key, padding included (masked by the caller)."""
    x = None
    for i, (w, b) in enumerate(layers):
        x = _din_first_layer(qf, kf, w.float(), b.float()) if i == 0 else x @ w.float().T + b.float()
        alpha = alphas[i].float() if alphas[i] is not None else None
        stats = dice_stats[i] if dice_stats is not None else None
        if activation == "dice" and stats is None:
            # statistics over the valid keys, the gradient through them: rankops.dice (four passes
            # over [B, L, H] on CPU instead of PyTorch's ~30)
            y, mean, var = dice(x.reshape(-1, x.shape[-1]), mask.reshape(-1), alpha, eps)
            if batch_stats is not None:
                batch_stats.append((mean.detach(), var.detach()))
            x = y.view(x.shape)
            continue
        x = _activate(x, activation, alpha, stats, eps)
    return (x @ w_out.float().reshape(-1)) + b_out.float().reshape(())


def _activate(x: Tensor, kind: str, alpha: Tensor | None, stats, eps: float) -> Tensor:
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "prelu":  # torch's fused PReLU (channels on dim 1 of a 2-D view): no where() + mul chain
        return torch.nn.functional.prelu(x.reshape(-1, x.shape[-1]), alpha).view(x.shape)
    mean, var = (s.float() for s in stats)
    p = torch.sigmoid((x - mean) * torch.rsqrt(var + eps))
    return x * (p + (1 - p) * alpha)


def _din_native_ok(q, keys, params, activation, dice_stats) -> bool:
    """Whether the fused kernels serve, forward and backward, through the din_attention custom op
    (nothing of size [B, L, H] stored): on CPU the C++ kernels (auto / cpp; triton when pinned, under
    the interpreter), on CUDA the Triton kernels (auto / triton). Not under torch.compile (it traces
    the PyTorch path), and not Dice with batch statistics (training), whose statistics span the
    batch: those keep the PyTorch path above."""
    from rankops import backend as _backend

    if torch.compiler.is_compiling() or (activation == "dice" and dice_stats is None):
        return False
    want, dev = _backend.current(), keys.device
    if dev.type == "cpu" and want in ("auto", "cpp"):
        return _backend.why_unavailable("cpp", dev) is None
    if (dev.type == "cuda" and want in ("auto", "triton")) or (dev.type == "cpu" and want == "triton"):
        return _backend.why_unavailable("triton", dev) is None
    return False


def _din_flat(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, activation, normalize, alphas, dice_stats, eps):
    """The op's flat arguments: absent parameters as empty tensors, the activation as its index."""
    none = q.new_empty(0, dtype=torch.float32)
    alphas = tuple(alphas) + (None, None)
    stats = tuple(dice_stats) + (None, None) if dice_stats is not None else (None, None)
    (m1, v1), (m2, v2) = ((s if s is not None else (none, none)) for s in stats[:2])
    opt = lambda t: t if t is not None else none  # noqa: E731
    return (q, keys.to(q.dtype), lengths.to(torch.int64), w1, b1, opt(w2), opt(b2), w_out, b_out,
            ACTIVATIONS.index(activation), bool(normalize), opt(alphas[0]), opt(alphas[1]), m1, v1, m2, v2,
            float(eps))


def _din_native(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, activation, normalize, alphas, dice_stats, eps):
    """The C++ inference kernel (csrc/cpu/attention.cpp, din_attention_inference), called directly."""
    fn = _dispatch._resolve(f"{_NATIVE}.din_attention_inference")
    return fn(*_din_flat(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, activation, normalize, alphas, dice_stats,
                         eps))


def _din_impls(name: str) -> dict[str, str]:
    native = "din_attention_inference" if name == "din_attention" else name
    return {"reference": f"rankops.ops.attention.reference:{name}", "cpp": f"{_NATIVE}.{native}",
            "triton": f"rankops.ops.attention.triton:{name}"}


def _din_backward_kernel(*args):  # the C++ kernel returns a list
    impls = _din_impls("din_attention_backward")
    return tuple(_dispatch.call("din_attention", impls, args[1].device, *_declare.contiguous(*args)))


def _din_fake(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, act, normalize, alpha1, alpha2, mean1, var1, mean2,
              var2, eps):
    return _declare.like(q)


def _din_backward(grad: Tensor, q: Tensor, keys: Tensor, lengths: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                  b2: Tensor, w_out: Tensor, b_out: Tensor, act: int, normalize: bool, alpha1: Tensor, alpha2: Tensor,
                  mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor, eps: float
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]: ...


def _din_backward_fake(grad, q, keys, lengths, w1, b1, w2, b2, w_out, b_out, act, normalize, alpha1, alpha2, mean1,
                       var1, mean2, var2, eps):
    return tuple(map(_declare.like, (q, keys, w1, b1, w2, b2, w_out, b_out, alpha1, alpha2)))


@_declare.op("din_attention", impls=_din_impls, backward_kernel=_din_backward_kernel,
             grads=("q", "keys", "w1", "b1", "w2", "b2", "w_out", "b_out", "alpha1", "alpha2"),
             fake=_din_fake, backward=_din_backward, backward_fake=_din_backward_fake)
def _din(q: Tensor, keys: Tensor, lengths: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w_out: Tensor,
         b_out: Tensor, act: int, normalize: bool, alpha1: Tensor, alpha2: Tensor, mean1: Tensor, var1: Tensor,
         mean2: Tensor, var2: Tensor, eps: float) -> Tensor: ...
