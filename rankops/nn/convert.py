"""Build rankops CrossNet / CIN layers from the state dicts of TorchRec and DeepCTR-Torch layers.

Each helper takes the other library's ``state_dict()`` (a module works too), infers the sizes from
the tensors' shapes and returns a rankops layer with the same parameters, giving the same outputs.

Layouts (per layer l; N the input width, r the rank, K the experts):

  TorchRec  CrossNet                kernels.l [N, N]                  bias.l [N, 1]
            LowRankCrossNet         W_kernels.l [N, r] (= u)  V_kernels.l [r, N] (= v)  bias.l [N, 1]
            VectorCrossNet          kernels.l [N, 1]                  bias.l [N, 1]
            LowRankMixtureCrossNet  U_kernels.l [K, N, r]  V_kernels.l [K, r, N]  C_kernels.l [K, r, r]
                                    bias.l [N, 1]   gates.k.weight [1, N] (K > 1 only; shared by layers)
                                    activation relu by default
  DeepCTR   CrossNet                kernels [L, N, 1] ('vector') or [L, N, N] ('matrix'), bias [L, N, 1]
                                    (old releases: kernels.l [N, 1], bias.l [N, 1])
            CrossNetMix             U_list [L, K, N, r]  V_list [L, K, N, r] (applied as V.T)
                                    C_list [L, K, r, r]  bias [L, N, 1]  gating.k.weight [1, N]; tanh
            CIN                     conv1ds.l.weight [Hn, H*M, 1] (index h*M + i)  conv1ds.l.bias [Hn]
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Union

import torch
from torch import Tensor, nn

from rankops.nn.cin import CIN
from rankops.nn.cross import CrossNet

StateDict = Union[Mapping[str, Tensor], nn.Module]


def _sd(src: StateDict) -> dict[str, Tensor]:
    return dict(src.state_dict() if isinstance(src, nn.Module) else src)


def _per_layer(sd: dict[str, Tensor], prefix: str) -> list[Tensor]:
    """The tensors ``prefix.0``, ``prefix.1``, ... of a ParameterList, in layer order."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
    found = {int(m.group(1)): t for k, t in sd.items() if (m := pat.match(k))}
    if not found or sorted(found) != list(range(len(found))):
        raise KeyError(f"rankops.nn.convert: no {prefix}.0, {prefix}.1, ... in the state dict (keys: {sorted(sd)[:8]})")
    return [found[i] for i in range(len(found))]


def _new(cls, *args, like: Tensor, **kwargs):
    return cls(*args, device=like.device, dtype=like.dtype, **kwargs)


def _load(net: nn.Module, params: dict[str, Tensor]) -> nn.Module:
    net.load_state_dict({k: v.detach().clone() for k, v in params.items()})
    return net


# ---------------------------------------------------------------------------------------------
# TorchRec


def crossnet_from_torchrec(src: StateDict) -> CrossNet:
    """``torchrec.modules.crossnet.CrossNet`` -> ``CrossNet(variant="v2")``."""
    sd = _sd(src)
    kernels, bias = _per_layer(sd, "kernels"), _per_layer(sd, "bias")
    N = kernels[0].shape[0]
    net = _new(CrossNet, N, len(kernels), "v2", like=kernels[0])
    return _load(net, {"weight": torch.stack(kernels), "bias": torch.stack([b.reshape(N) for b in bias])})


def lowrank_crossnet_from_torchrec(src: StateDict) -> CrossNet:
    """``torchrec.modules.crossnet.LowRankCrossNet`` -> ``CrossNet(variant="lowrank")``."""
    sd = _sd(src)
    W, V, bias = _per_layer(sd, "W_kernels"), _per_layer(sd, "V_kernels"), _per_layer(sd, "bias")
    N, r = W[0].shape
    net = _new(CrossNet, N, len(W), "lowrank", low_rank=r, like=W[0])
    return _load(net, {"u": torch.stack(W), "v": torch.stack(V), "bias": torch.stack([b.reshape(N) for b in bias])})


def vector_crossnet_from_torchrec(src: StateDict) -> CrossNet:
    """``torchrec.modules.crossnet.VectorCrossNet`` (DCN v1) -> ``CrossNet(variant="v1")``."""
    sd = _sd(src)
    kernels, bias = _per_layer(sd, "kernels"), _per_layer(sd, "bias")
    N = kernels[0].shape[0]
    net = _new(CrossNet, N, len(kernels), "v1", like=kernels[0])
    return _load(net, {"w": torch.stack([k.reshape(N) for k in kernels]),
                       "bias": torch.stack([b.reshape(N) for b in bias])})


def mixture_crossnet_from_torchrec(
    src: StateDict, activation: Union[str, Callable[[Tensor], Tensor]] = "relu"
) -> CrossNet:
    """``torchrec.modules.crossnet.LowRankMixtureCrossNet`` -> ``CrossNet(variant="mix")``.

    ``activation`` must be the one the TorchRec module was built with (its default is relu).
    """
    sd = _sd(src)
    U, V, C, bias = (_per_layer(sd, k) for k in ("U_kernels", "V_kernels", "C_kernels", "bias"))
    K, N, r = U[0].shape
    net = _new(CrossNet, N, len(U), "mix", low_rank=r, num_experts=K, activation=activation, like=U[0])
    gate = torch.cat([sd[f"gates.{k}.weight"] for k in range(K)]) if K > 1 else U[0].new_zeros(K, N)
    return _load(net, {"U": torch.stack(U), "V": torch.stack(V), "C": torch.stack(C), "gate": gate,
                       "bias": torch.stack([b.reshape(N) for b in bias])})


# ---------------------------------------------------------------------------------------------
# DeepCTR-Torch


def crossnet_from_deepctr(src: StateDict, parameterization: str = "auto") -> CrossNet:
    """``deepctr_torch.layers.interaction.CrossNet`` -> ``CrossNet(variant="v1" | "v2")``.

    'vector' (DCN) kernels are ``[L, N, 1]``, 'matrix' (DCN-V2) ones ``[L, N, N]``; with N = 1 the two
    cannot be told apart by shape, so pass ``parameterization`` explicitly there.
    """
    sd = _sd(src)
    if "kernels" in sd:
        kernels, bias = list(sd["kernels"]), list(sd["bias"])
    else:  # releases before 0.2.4 kept one ParameterList entry per layer (vector only)
        kernels, bias = _per_layer(sd, "kernels"), _per_layer(sd, "bias")
    N = kernels[0].shape[0]
    if parameterization == "auto":
        if N == 1:
            raise ValueError("rankops.nn.convert: with in_features = 1 'vector' and 'matrix' kernels have the same "
                             "shape; pass parameterization='vector' or 'matrix'")
        parameterization = "matrix" if kernels[0].shape[-1] == N else "vector"
    b = torch.stack([x.reshape(N) for x in bias])
    if parameterization == "matrix":
        net = _new(CrossNet, N, len(kernels), "v2", like=kernels[0])
        return _load(net, {"weight": torch.stack(kernels), "bias": b})
    if parameterization != "vector":
        raise ValueError(f"rankops.nn.convert: parameterization must be 'vector', 'matrix' or 'auto', got "
                         f"{parameterization!r}")
    net = _new(CrossNet, N, len(kernels), "v1", like=kernels[0])
    return _load(net, {"w": torch.stack([k.reshape(N) for k in kernels]), "bias": b})


def crossnetmix_from_deepctr(
    src: StateDict, activation: Union[str, Callable[[Tensor], Tensor]] = "tanh"
) -> CrossNet:
    """``deepctr_torch.layers.interaction.CrossNetMix`` -> ``CrossNet(variant="mix")`` (tanh experts).

    DeepCTR stores V as ``[N, r]`` and applies ``V.T``; it always gates (softmax over one expert is 1).
    """
    sd = _sd(src)
    U, V, C, bias = sd["U_list"], sd["V_list"], sd["C_list"], sd["bias"]
    L, K, N, r = U.shape
    net = _new(CrossNet, N, L, "mix", low_rank=r, num_experts=K, activation=activation, like=U)
    gate = torch.cat([sd[f"gating.{k}.weight"] for k in range(K)])
    return _load(net, {"U": U, "V": V.transpose(-1, -2), "C": C, "gate": gate, "bias": bias.reshape(L, N)})


def cin_from_deepctr(
    src: StateDict, split_half: bool = True, activation: Union[str, Callable[[Tensor], Tensor], None] = "relu"
) -> CIN:
    """``deepctr_torch.layers.interaction.CIN`` -> ``CIN``. Pass the module's ``split_half`` and
    ``activation`` (DeepCTR's defaults: True and relu); the sizes come from the Conv1d weights."""
    sd = _sd(src)
    weights = []
    while f"conv1ds.{len(weights)}.weight" in sd:
        weights.append(sd[f"conv1ds.{len(weights)}.weight"])
    if not weights:
        raise KeyError("rankops.nn.convert: no conv1ds.0.weight in the state dict")
    M = round(weights[0].shape[1] ** 0.5)  # the first layer crosses x0 with itself: H*M = M*M
    if M * M != weights[0].shape[1]:
        raise ValueError(f"rankops.nn.convert: conv1ds.0.weight {tuple(weights[0].shape)} is not [Hn, M*M, 1]")
    sizes = [w.shape[0] for w in weights]
    has_bias = "conv1ds.0.bias" in sd
    net = _new(CIN, M, sizes, split_half=split_half, activation=activation, bias=has_bias, like=weights[0])
    params = {}
    for k, w in enumerate(weights):
        H = w.shape[1] // M
        params[f"weights.{k}"] = w.reshape(w.shape[0], H, M)
        if has_bias:
            params[f"biases.{k}"] = sd[f"conv1ds.{k}.bias"]
    return _load(net, params)
