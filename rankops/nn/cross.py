"""DCN / DCN-V2 cross networks on the fused cross ops."""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from rankops.ops.cross import cross_net, cross_net_lowrank, cross_net_v1

VARIANTS = ("v2", "v1", "lowrank", "mix")


def _activation(act: Union[str, Callable[[Tensor], Tensor], None]) -> Callable[[Tensor], Tensor]:
    if act is None or act == "linear":
        return lambda x: x
    if isinstance(act, str):
        table = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
        if act not in table:
            raise ValueError(f"rankops.nn: unknown activation {act!r}; choose one of {sorted(table)} or pass a callable")
        return table[act]
    return act


class CrossNet(nn.Module):
    r"""A stack of cross layers (DCN, DCN-V2) over ``x0 [B, N]``; returns ``x_L [B, N]``.

    variant:
      * ``"v2"``       DCN-V2 full rank:  ``x_{l+1} = x0 * (x_l @ W_l.T + b_l) + x_l``, ``W_l [N, N]``
      * ``"lowrank"``  DCN-V2 low rank:   ``x_{l+1} = x0 * ((x_l @ V_l.T) @ U_l.T + b_l) + x_l``,
        ``U_l [N, r]``, ``V_l [r, N]``
      * ``"v1"``       DCN:               ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l``, ``w_l [N]``
      * ``"mix"``      DCN-Mix (DCN-V2's mixture of low-rank experts):
        ``x_{l+1} = sum_e g_e(x_l) * x0 * (U_le g(C_le g(V_le x_l)) + b_l) + x_l`` with
        ``g_e = softmax_e(x_l @ G.T)`` (gates ``G [K, N]`` shared by the layers, as in TorchRec and
        DeepCTR-Torch; no gating when ``num_experts == 1``) and ``g`` the nonlinearity ``activation``.
        Since the gates sum to one, the K experts collapse to one product
        ``x0 * (concat_e(g_e h_e) @ concat_e(U_le).T + b_l) + x_l``.

    Parameters are stacked over layers: ``weight [L, N, N]``, ``u [L, N, r]``, ``v [L, r, N]``,
    ``w [L, N]``, ``bias [L, N]``, and for "mix" ``U [L, K, N, r]``, ``V [L, K, r, N]``,
    ``C [L, K, r, r]``, ``gate [K, N]``. ``rankops.nn.convert`` loads TorchRec and DeepCTR-Torch
    state dicts. v2, v1 and lowrank run their whole stack as one op (cross_net, cross_net_v1,
    cross_net_lowrank); "mix" runs its small projections in PyTorch and its [B, N] part as one GEMM + epilogue.

    Example::

        net = CrossNet(429, 3)                       # DCN-V2, full rank
        y = net(torch.randn(4096, 429))              # [4096, 429]
    """

    def __init__(
        self,
        in_dim: int,
        num_layers: int,
        variant: str = "v2",
        low_rank: Optional[int] = None,
        num_experts: int = 4,
        activation: Union[str, Callable[[Tensor], Tensor], None] = "relu",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"rankops.nn.CrossNet: variant must be one of {VARIANTS}, got {variant!r}")
        if in_dim < 1 or num_layers < 1:
            raise ValueError(f"rankops.nn.CrossNet: in_dim and num_layers must be >= 1, got {in_dim}, {num_layers}")
        if variant in ("lowrank", "mix"):
            if low_rank is None:
                low_rank = max(1, in_dim // 4)  # the DCN-V2 paper's rule of thumb, r ~ N/4
            if low_rank < 1:
                raise ValueError(f"rankops.nn.CrossNet: low_rank must be >= 1, got {low_rank}")
        if variant == "mix" and num_experts < 1:
            raise ValueError(f"rankops.nn.CrossNet: num_experts must be >= 1, got {num_experts}")
        self.in_dim, self.num_layers, self.variant = in_dim, num_layers, variant
        self.low_rank = low_rank if variant in ("lowrank", "mix") else None
        self.num_experts = num_experts if variant == "mix" else None
        self.activation = activation
        self._act = _activation(activation)
        fk = dict(device=device, dtype=dtype)
        L, N, r, K = num_layers, in_dim, low_rank, num_experts
        if variant == "v2":
            self.weight = nn.Parameter(torch.empty(L, N, N, **fk))
        elif variant == "lowrank":
            self.u = nn.Parameter(torch.empty(L, N, r, **fk))
            self.v = nn.Parameter(torch.empty(L, r, N, **fk))
        elif variant == "v1":
            self.w = nn.Parameter(torch.empty(L, N, **fk))
        else:
            self.U = nn.Parameter(torch.empty(L, K, N, r, **fk))
            self.V = nn.Parameter(torch.empty(L, K, r, N, **fk))
            self.C = nn.Parameter(torch.empty(L, K, r, r, **fk))
            self.gate = nn.Parameter(torch.empty(K, N, **fk))
        self.bias = nn.Parameter(torch.empty(L, N, **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal kernels and zero biases, as TorchRec and DeepCTR-Torch initialise them."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name == "bias":
                    p.zero_()
                elif name == "gate":
                    bound = 1 / math.sqrt(self.in_dim)  # nn.Linear's default
                    p.uniform_(-bound, bound)
                elif name == "w":
                    for l in range(p.shape[0]):
                        nn.init.xavier_normal_(p[l].view(-1, 1))
                else:  # each [rows, cols] matrix of the stack on its own fans
                    for m in p.view(-1, *p.shape[-2:]):
                        nn.init.xavier_normal_(m)

    def forward(self, x0: Tensor) -> Tensor:
        """x0: ``[B, N]`` -> ``[B, N]``."""
        if self.variant == "v2":
            return cross_net(x0, self.weight, self.bias)
        if self.variant == "v1":
            return cross_net_v1(x0, self.w, self.bias)
        if self.variant == "lowrank":
            return cross_net_lowrank(x0, self.u, self.v, self.bias)
        x = x0
        for l in range(self.num_layers):
            x = self._mix_layer(x0, x, l)
        return x

    def _mix_layer(self, x0: Tensor, x: Tensor, l: int) -> Tensor:
        B, N = x.shape
        K, r = self.num_experts, self.low_rank
        h = self._act(torch.einsum("bn,krn->bkr", x, self.V[l]))  # [B, K, r]
        h = self._act(torch.einsum("bkr,ksr->bks", h, self.C[l]))  # [B, K, r]
        if K > 1:
            h = h * torch.softmax(x @ self.gate.T, dim=1)[:, :, None]
        # sum_e g_e * x0 * (U_e h_e + b) = x0 * (concat(g_e h_e) @ concat(U_e).T + b): one GEMM over K*r
        u = self.U[l].permute(1, 0, 2).reshape(N, K * r)
        return cross_layer_lowrank_from_projection(x0, x, h.reshape(B, K * r), u, self.bias[l])

    def extra_repr(self) -> str:
        s = f"in_dim={self.in_dim}, num_layers={self.num_layers}, variant={self.variant!r}"
        if self.low_rank is not None:
            s += f", low_rank={self.low_rank}"
        if self.num_experts is not None:
            s += f", num_experts={self.num_experts}, activation={self.activation!r}"
        return s


def cross_layer_lowrank_from_projection(x0: Tensor, xl: Tensor, t: Tensor, u: Tensor, bias: Tensor) -> Tensor:
    """``x0 * (t @ u.T + bias) + xl``: the [B, N] half of a low-rank cross layer whose projection
    ``t [B, R]`` was computed elsewhere (DCN-Mix's gated experts)."""
    return torch.addcmul(xl, x0, torch.addmm(bias, t, u.T))
