"""Computations several libraries' layers share, written once on the rankops ops. Each takes the
layer's own parameters (views of them at most), so gradients reach the same Parameter objects."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rankops
from rankops.nn.cross import cross_layer_lowrank_from_projection
from rankops.ops.attention import _din_first_layer
from rankops.patch._core import Leave

# Activations known to act elementwise (so applying them to a [B, K, r] block equals the
# libraries' per-expert [B, r, 1] calls).
_ELEMENTWISE_FNS = {torch.relu, torch.tanh, torch.sigmoid, F.relu, torch.nn.functional.tanh,
                    torch.nn.functional.sigmoid, torch.nn.functional.gelu, torch.nn.functional.silu}
_ELEMENTWISE_MODULES = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU)


def check_elementwise(act, what: str) -> None:
    if act in _ELEMENTWISE_FNS or isinstance(act, _ELEMENTWISE_MODULES):
        return
    if isinstance(act, nn.PReLU) and act.num_parameters == 1:
        return
    raise Leave(f"{what} {act!r} is not known to act elementwise")


def cross_mix_layer(x0: Tensor, x: Tensor, V: Tensor, C: Tensor, U: Tensor, bias: Tensor,
                    gate: Optional[Tensor], act: Callable[[Tensor], Tensor]) -> Tensor:
    """One DCN-Mix layer on a ``[B, N]`` stream:
    ``x0 * sum_e g_e (U_e act(C_e act(V_e x)) + b) + x``, with ``V [K, r, N]``, ``C [K, r, r]``,
    ``U [K, N, r]``, ``bias [N]``, ``gate [K, N]`` (softmax gates; None: one expert, no gating).
    Since the gates sum to one, the K experts' [B, N] parts are one GEMM over K*r plus the fused
    epilogue ``x0 * (. + b) + x`` (rankops.nn.cross.cross_layer_lowrank_from_projection)."""
    B, N = x.shape
    K, r = V.shape[0], V.shape[1]
    h = act(torch.einsum("bn,krn->bkr", x, V))
    h = act(torch.einsum("bkr,ksr->bks", h, C))
    if gate is not None:
        h = h * torch.softmax(x @ gate.T, dim=1)[:, :, None]
    u = U.permute(1, 0, 2).reshape(N, K * r)
    return cross_layer_lowrank_from_projection(x0, x, h.reshape(B, K * r), u, bias)


def conv1x1_weight(conv: nn.Module, what: str) -> None:
    """Leave unless ``conv`` is a plain pointwise Conv1d (a linear map over its channels)."""
    if type(conv) is not nn.Conv1d:
        raise Leave(f"{what} is a {type(conv).__qualname__}, not an nn.Conv1d")
    plain = dict(kernel_size=(1,), stride=(1,), padding=(0,), dilation=(1,), groups=1, padding_mode="zeros")
    for k, v in plain.items():
        if getattr(conv, k) != v:
            raise Leave(f"{what} has {k}={getattr(conv, k)!r}; only pointwise (kernel 1) convolutions are CIN layers")


def din_first_layer(query: Tensor, keys: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(cat([q, k, q - k, q * k], -1))`` for every key, without the ``[B, L, 4E]``
    concatenation: ``(Wa + Wc) q + (Wb - Wc + Wd diag(q)) k + b`` (rankops' DIN first layer).
    query ``[B, E]``, keys ``[B, L, E]`` -> ``[B, L, H1]``."""
    bias = linear.bias if linear.bias is not None else query.new_zeros(linear.out_features)
    return _din_first_layer(query, keys, linear.weight, bias)


def check_din_linear(linear: nn.Module, E: int, what: str) -> None:
    if type(linear) is not nn.Linear:
        raise Leave(f"{what} is a {type(linear).__qualname__}, not an nn.Linear")
    if linear.in_features != 4 * E:
        raise Leave(f"{what} takes {linear.in_features} inputs, not 4 x {E} ([q, k, q-k, q*k])")


def cin_stack(x0: Tensor, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
              act: Callable[[Tensor], Tensor], split_half: bool, direct_first: bool) -> list[Tensor]:
    """The CIN recursion on rankops.cin_layer; returns each layer's direct (output) maps.
    ``weights[k]`` is ``[Hn, H, M]``. With split_half a non-final layer's maps are split in two
    halves; DeepCTR-Torch feeds the first half on and outputs the second (``direct_first=False``),
    torch-rechub the other way round."""
    h, direct = x0, []
    last = len(weights) - 1
    for k, (w, b) in enumerate(zip(weights, biases)):
        a = act(rankops.cin_layer(h, x0, w, b))
        if split_half and k != last:
            first, second = torch.split(a, a.shape[1] // 2, 1)
            d, h = (first, second) if direct_first else (second, first)
        else:
            d, h = a, a
        direct.append(d)
    return direct
