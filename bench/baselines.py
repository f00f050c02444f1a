"""Third-party layers re-implemented from their published source, for the tests and the benchmarks.

Neither TorchRec nor DeepCTR-Torch is a dependency, so their cross and CIN layers are written out
here once, from their formulas and parameter layouts (torchrec/modules/crossnet.py,
deepctr_torch/layers/interaction.py): tests/nn check that rankops.nn.convert reproduces each of them
from its state dict, and bench/ times the DeepCTR CIN (einsum + Conv1d) and the TorchRec cross
formula as the eager baselines. bench/ is the home because tests already import bench (the harness
tests), while rankops itself has no business shipping copies of other libraries' layers.

Biases start random (the originals start at zero) so that a misplaced bias shows in a comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _xavier(*shape):
    return nn.Parameter(nn.init.xavier_normal_(torch.empty(*shape)))


def _randn_bias(*shape):
    # the originals start with zero biases; random ones make the test see a misplaced bias
    return nn.Parameter(torch.randn(*shape) * 0.1)


# ---------------------------------------------------------------------------------------------
# TorchRec's layers (torchrec/modules/crossnet.py): per-layer ParameterLists, x handled as [B, N, 1]


class TRCrossNet(nn.Module):
    def __init__(self, N, L):
        super().__init__()
        self.kernels = nn.ParameterList([_xavier(N, N) for _ in range(L)])
        self.bias = nn.ParameterList([_randn_bias(N, 1) for _ in range(L)])

    def forward(self, x):
        x0 = x.unsqueeze(2)
        xl = x0
        for W, b in zip(self.kernels, self.bias):
            xl = x0 * (torch.matmul(W, xl) + b) + xl
        return xl.squeeze(2)


class TRLowRankCrossNet(nn.Module):
    def __init__(self, N, L, r):
        super().__init__()
        self.W_kernels = nn.ParameterList([_xavier(N, r) for _ in range(L)])
        self.V_kernels = nn.ParameterList([_xavier(r, N) for _ in range(L)])
        self.bias = nn.ParameterList([_randn_bias(N, 1) for _ in range(L)])

    def forward(self, x):
        x0 = x.unsqueeze(2)
        xl = x0
        for W, V, b in zip(self.W_kernels, self.V_kernels, self.bias):
            xl = x0 * (torch.matmul(W, torch.matmul(V, xl)) + b) + xl
        return xl.squeeze(2)


class TRVectorCrossNet(nn.Module):
    def __init__(self, N, L):
        super().__init__()
        self.kernels = nn.ParameterList([_xavier(N, 1) for _ in range(L)])
        self.bias = nn.ParameterList([_randn_bias(N, 1) for _ in range(L)])

    def forward(self, x):
        x0 = x.unsqueeze(2)
        xl = x0
        for w, b in zip(self.kernels, self.bias):
            xl_w = torch.tensordot(xl, w, dims=([1], [0]))  # [B, 1, 1]
            xl = torch.matmul(x0, xl_w) + b + xl
        return xl.squeeze(2)


class TRLowRankMixtureCrossNet(nn.Module):
    def __init__(self, N, L, K, r, activation=torch.relu):
        super().__init__()
        self.K, self.act = K, activation
        self.U_kernels = nn.ParameterList([_xavier(K, N, r) for _ in range(L)])
        self.V_kernels = nn.ParameterList([_xavier(K, r, N) for _ in range(L)])
        self.C_kernels = nn.ParameterList([_xavier(K, r, r) for _ in range(L)])
        self.bias = nn.ParameterList([_randn_bias(N, 1) for _ in range(L)])
        self.gates = nn.ModuleList([nn.Linear(N, 1, bias=False) for _ in range(K)]) if K > 1 else None

    def forward(self, x):
        x0 = x.unsqueeze(2)
        xl = x0
        for U, V, C, b in zip(self.U_kernels, self.V_kernels, self.C_kernels, self.bias):
            if self.K > 1:
                gating = torch.stack([g(xl.squeeze(2)) for g in self.gates], 1)  # [B, K, 1]
            experts = []
            for i in range(self.K):
                e = torch.matmul(V[i], xl)
                e = torch.matmul(C[i], self.act(e))
                e = torch.matmul(U[i], self.act(e))
                experts.append((x0 * (e + b)).squeeze(2))
            experts = torch.stack(experts, 2)  # [B, N, K]
            if self.K > 1:
                xl = torch.matmul(experts, torch.softmax(gating, 1)) + xl
            else:
                xl = experts + xl
        return xl.squeeze(2)


# ---------------------------------------------------------------------------------------------
# DeepCTR-Torch's layers (deepctr_torch/layers/interaction.py): stacked parameters [L, ...]


class DCCrossNet(nn.Module):
    def __init__(self, N, L, parameterization):
        super().__init__()
        self.p = parameterization
        shape = (N, 1) if parameterization == "vector" else (N, N)
        self.kernels = nn.Parameter(torch.stack([nn.init.xavier_normal_(torch.empty(*shape)) for _ in range(L)]))
        self.bias = nn.Parameter(torch.randn(L, N, 1) * 0.1)

    def forward(self, x):
        x0 = x.unsqueeze(2)
        xl = x0
        for i in range(self.kernels.shape[0]):
            if self.p == "vector":
                xl_w = torch.tensordot(xl, self.kernels[i], dims=([1], [0]))
                xl = torch.matmul(x0, xl_w) + self.bias[i] + xl
            else:
                xl = x0 * (torch.matmul(self.kernels[i], xl) + self.bias[i]) + xl
        return xl.squeeze(2)


class DCCrossNetMix(nn.Module):
    def __init__(self, N, L, K, r):
        super().__init__()
        init = lambda *s: nn.Parameter(nn.init.xavier_normal_(torch.empty(*s)))  # noqa: E731
        self.U_list, self.V_list, self.C_list = init(L, K, N, r), init(L, K, N, r), init(L, K, r, r)
        self.gating = nn.ModuleList([nn.Linear(N, 1, bias=False) for _ in range(K)])
        self.bias = nn.Parameter(torch.randn(L, N, 1) * 0.1)

    def forward(self, x):
        x0 = x.unsqueeze(2)
        xl = x0
        L, K = self.U_list.shape[:2]
        for i in range(L):
            outs, gates = [], []
            for e in range(K):
                gates.append(self.gating[e](xl.squeeze(2)))
                v = torch.tanh(torch.matmul(self.V_list[i][e].t(), xl))
                v = torch.tanh(torch.matmul(self.C_list[i][e], v))
                uv = torch.matmul(self.U_list[i][e], v)
                outs.append((x0 * (uv + self.bias[i])).squeeze(2))
            outs = torch.stack(outs, 2)
            gates = torch.stack(gates, 1)
            xl = torch.matmul(outs, gates.softmax(1)) + xl
        return xl.squeeze(2)


class DCCIN(nn.Module):
    """DeepCTR-Torch's CIN: the outer product Z = X^k (x) X^0 materialised by einsum, then a
    Conv1d(H*M, Hn, 1) over it (the baseline rankops.cin_layer avoids)."""

    def __init__(self, M, layer_size, split_half=True, activation=torch.relu):
        super().__init__()
        self.layer_size, self.split_half, self.act = layer_size, split_half, activation
        self.conv1ds = nn.ModuleList()
        H = M
        for i, size in enumerate(layer_size):
            self.conv1ds.append(nn.Conv1d(H * M, size, 1))
            H = size // 2 if split_half and i < len(layer_size) - 1 else size

    def forward(self, x):
        B, _, D = x.shape
        hidden, final = [x], []
        for i, size in enumerate(self.layer_size):
            z = torch.einsum("bhd,bmd->bhmd", hidden[-1], hidden[0]).reshape(B, hidden[-1].shape[1] * x.shape[1], D)
            cur = self.act(self.conv1ds[i](z))
            if self.split_half:
                if i != len(self.layer_size) - 1:
                    nxt, direct = torch.split(cur, 2 * [size // 2], 1)
                else:
                    direct, nxt = cur, 0
            else:
                direct, nxt = cur, cur
            final.append(direct)
            hidden.append(nxt)
        return torch.cat(final, 1).sum(-1)


# ---------------------------------------------------------------------------------------------
# The eager baselines of bench/cross.py: TorchRec's per-layer formula written with F.linear on [B, N]
# (TorchRec itself multiplies [N, N] @ [B, N, 1]: the same arithmetic as a batched matmul), over
# stacked parameters unbound per layer (unbind's backward is one stack; indexing's would zero-fill
# an [L, ...] gradient per layer).


def cross_stack(x0, weight, bias):
    """DCN-V2 full rank: ``x = x0 * F.linear(x, W_l, b_l) + x`` for each layer; weight [L, N, N]."""
    x = x0
    for w, b in zip(weight.unbind(0), bias.unbind(0)):
        x = x0 * F.linear(x, w, b) + x
    return x


def cross_stack_lowrank(x0, u, v, bias):
    """DCN-V2 low rank: ``x = x0 * F.linear(F.linear(x, V_l), U_l, b_l) + x``; u [L, N, r], v [L, r, N]."""
    x = x0
    for uu, vv, b in zip(u.unbind(0), v.unbind(0), bias.unbind(0)):
        x = x0 * F.linear(F.linear(x, vv), uu, b) + x
    return x


def cross_stack_v1(x0, w, bias):
    """DCN (v1): ``x = x0 * (x @ w_l)[:, None] + b_l + x``; w [L, N]."""
    x = x0
    for ww, b in zip(w.unbind(0), bias.unbind(0)):
        x = x0 * (x @ ww)[:, None] + b + x
    return x
