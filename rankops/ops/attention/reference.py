"""Pure-PyTorch ground truth for the attention family. Plain, slow and obviously right: computed in
fp32 on padded tensors with an explicit mask, cast to the input dtype at the end.

Conventions shared with every backend:
  * ``lse[b,h,i] = log sum_{j < len_b} exp(scale * <q[b,h,i], k[b,h,j]>)`` in fp32; ``-inf`` for
    an empty sample (log of an empty sum). The backward recomputes ``P = exp(scale*S - lse)`` from it.
  * A sample of length 0 yields zeros; the gradients of its query and of every padded key are 0.

The forward functions are differentiable by autograd (the tests and benchmarks use them as the
eager baseline); the ``*_backward`` functions are the explicit formulas the kernels implement.
"""

from __future__ import annotations

import torch
from torch import Tensor


def key_mask(lengths: Tensor, L: int) -> Tensor:
    """``mask[b, j] = j < lengths[b]``, shape [B, L]."""
    return torch.arange(L, device=lengths.device)[None, :] < lengths.to(torch.int64)[:, None]


def _valid(x: Tensor, mask: Tensor) -> Tensor:
    """x in fp32 with the padded rows set to 0: whatever the padding holds (even NaN) never leaks."""
    return x.float().masked_fill(~mask.transpose(-1, -2), 0.0)


def _probs(s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked softmax of scores s[B,H,Q,L] over the keys; (P, lse). Empty rows: P = 0, lse = -inf.

    Written so that autograd stays finite on empty rows: the max is replaced by 0 there, so no
    ``-inf - -inf`` appears in the forward or the backward.
    """
    if s.shape[-1] == 0:  # no keys at all (L = 0)
        return s, s.new_full(s.shape[:-1], float("-inf"))
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(s - m)  # exactly 0 at masked keys
    denom = e.sum(-1, keepdim=True)
    p = e / denom.clamp_min(torch.finfo(torch.float32).tiny)
    lse = (m + torch.log(denom)).squeeze(-1)  # log(0) = -inf for an empty sample
    return p, lse


def target_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """out[b,h,i] = softmax_j(scale * q[b,h,i] . k[b,h,j], j < lengths[b]) @ v[b,h,:len]; (out, lse)."""
    L = k.shape[2]
    mask = key_mask(lengths, L)[:, None, None, :]
    k, v = _valid(k, mask), _valid(v, mask)
    s = torch.einsum("bhqd,bhld->bhql", q.float(), k) * scale
    p, lse = _probs(s, mask)
    out = torch.einsum("bhql,bhld->bhqd", p, v)
    return out.to(q.dtype), lse


def target_attention_backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) from the saved lse:  P = exp(scale*S - lse) on valid keys, D_i = dO_i . O_i,
    dV = P^T dO,  dS = P * (dO V^T - D),  dQ = scale * dS K,  dK = scale * dS^T Q."""
    L = k.shape[2]
    mask = key_mask(lengths, L)[:, None, None, :]
    qf, kf, vf, g = q.float(), _valid(k, mask), _valid(v, mask), grad.float()
    s = torch.einsum("bhqd,bhld->bhql", qf, kf) * scale
    lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.where(mask, torch.exp(s - lse_safe[..., None]), torch.zeros_like(s))
    delta = (g * out.float()).sum(-1, keepdim=True)
    dv = torch.einsum("bhql,bhqd->bhld", p, g)
    dp = torch.einsum("bhqd,bhld->bhql", g, vf)
    ds = p * (dp - delta)
    dq = torch.einsum("bhql,bhld->bhqd", ds, kf) * scale
    dk = torch.einsum("bhql,bhqd->bhld", ds, qf) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ---------------------------------------------------------------------------------------------
# jagged: keys packed as [S, H, d] with offsets[B+1]; reduced to the padded case


def jagged_to_padded(x: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """[S, H, d] packed rows -> ([B, H, Lmax, d] zero-padded, lengths[B])."""
    offsets = offsets.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    B = lengths.numel()
    Lmax = int(lengths.max()) if B else 0
    S, H, d = x.shape
    batch = torch.repeat_interleave(torch.arange(B, device=x.device), lengths, output_size=S)
    pos = torch.arange(S, device=x.device) - offsets[batch]
    padded = x.new_zeros(B, Lmax, H, d)
    padded[batch, pos] = x
    return padded.transpose(1, 2), lengths


def padded_to_jagged(x: Tensor, offsets: Tensor) -> Tensor:
    """[B, H, Lmax, d] -> [S, H, d], the inverse of jagged_to_padded on the valid rows."""
    offsets = offsets.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    S = int(offsets[-1])
    batch = torch.repeat_interleave(torch.arange(lengths.numel(), device=x.device), lengths, output_size=S)
    pos = torch.arange(S, device=x.device) - offsets[batch]
    return x.transpose(1, 2)[batch, pos]


def jagged_target_attention(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    kp, lengths = jagged_to_padded(k, offsets)
    vp, _ = jagged_to_padded(v, offsets)
    return target_attention(q, kp, vp, lengths, scale)


def jagged_target_attention_backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    kp, lengths = jagged_to_padded(k, offsets)
    vp, _ = jagged_to_padded(v, offsets)
    dq, dk, dv = target_attention_backward(grad, q, kp, vp, lengths, out, lse, scale)
    return dq, padded_to_jagged(dk, offsets), padded_to_jagged(dv, offsets)


# ---------------------------------------------------------------------------------------------
# DIN's activation unit, literally: concatenate [q, k, q-k, q*k] per key, then the MLP


def activation(x: Tensor, kind: str, alpha: Tensor | None, stats: tuple[Tensor, Tensor] | None, mask: Tensor,
               eps: float) -> Tensor:
    """sigmoid / PReLU / Dice on x[B, L, H] (mask[B, L] marks the valid keys, used for Dice's batch
    statistics when ``stats`` is None)."""
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "prelu":
        return torch.where(x > 0, x, alpha * x)
    if kind == "dice":
        if stats is None:
            valid = x[mask]  # [N, H]
            mean, var = valid.mean(0), valid.var(0, unbiased=False)
        else:
            mean, var = stats
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + eps))
        return p * x + (1 - p) * alpha * x
    raise ValueError(f"unknown activation {kind!r}")


def din_attention_concat(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, activation_kind="sigmoid",
                         normalize=False, alphas=(None, None), dice_stats=(None, None), eps=1e-8) -> Tensor:
    """out[b] = sum_{l < len_b} a(b, l) keys[b, l] with a = MLP([q, k, q - k, q * k]) (softmax over
    the valid keys when normalize). Materialises the [B, L, 4d] concatenation: the ground truth."""
    B, L, d = keys.shape
    mask = key_mask(lengths, L)
    qf, kf = q.float()[:, None, :].expand(B, L, d), keys.float()
    x = torch.cat([qf, kf, qf - kf, qf * kf], dim=-1)  # [B, L, 4d]
    layers = [(w1, b1)] + ([(w2, b2)] if w2 is not None else [])
    for i, (w, b) in enumerate(layers):
        x = x @ w.float().T + b.float()
        a = alphas[i].float() if alphas[i] is not None else None
        st = tuple(t.float() for t in dice_stats[i]) if dice_stats[i] is not None else None
        x = activation(x, activation_kind, a, st, mask, eps)
    score = (x @ w_out.float().reshape(1, -1).T).squeeze(-1) + b_out.float().reshape(())  # [B, L]
    if normalize:
        score = score.masked_fill(~mask, float("-inf"))
        w = torch.softmax(score, -1).nan_to_num(0.0)  # empty sample: all -inf -> NaN -> 0
    else:
        w = score.masked_fill(~mask, 0.0)
    out = torch.einsum("bl,bld->bd", w, kf.masked_fill(~mask[..., None], 0.0))
    return out.to(q.dtype)


# The din_attention op's flat form (activation as an index into ACTIVATIONS, absent parameters as
# empty tensors, Dice statistics given): the concatenation above, and its gradient by autograd.

_DIN_ACTIVATIONS = ("sigmoid", "prelu", "dice")
_DIN_GRADS = 10  # q, keys, w1, b1, w2, b2, w_out, b_out, alpha1, alpha2


def _din_args(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, act, normalize, alpha1, alpha2, mean1, var1, mean2,
              var2, eps):
    some = lambda t: t if t.numel() else None  # noqa: E731
    return dict(q=q, keys=keys, lengths=lengths, w1=w1, b1=b1, w2=some(w2), b2=some(b2), w_out=w_out, b_out=b_out,
                activation_kind=_DIN_ACTIVATIONS[act], normalize=normalize, alphas=(some(alpha1), some(alpha2)),
                dice_stats=((mean1, var1), (mean2, var2)) if act == 2 else (None, None), eps=eps)


def din_attention(*args) -> Tensor:
    return din_attention_concat(**_din_args(*args))


def din_attention_backward(grad, *args) -> tuple[Tensor, ...]:
    """The gradients of din_attention by torch.func.vjp (which works where the op's kernel runs:
    below torch's autograd key, where a plain autograd.grad would record nothing)."""
    diff = (0, 1, 3, 4, 5, 6, 7, 8, 11, 12)  # the positions of the differentiable inputs, in _DIN_GRADS order

    def f(*leaves):
        full = list(args)
        for i, t in zip(diff, leaves):
            full[i] = t
        return din_attention(*full)

    _, vjp = torch.func.vjp(f, *(args[i] for i in diff))
    return tuple(g.to(args[i].dtype) for g, i in zip(vjp(grad.to(args[0].dtype)), diff))
