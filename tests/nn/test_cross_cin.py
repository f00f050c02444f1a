"""rankops.nn.CrossNet / CIN and the converters from TorchRec and DeepCTR-Torch state dicts.

The TorchRec and DeepCTR-Torch layers are re-implemented here from their published formulas and
parameter layouts (neither library is a dependency): each converter must reproduce the original
layer's output and input gradient from its state dict alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rankops
from rankops.nn import CIN, CrossNet
from rankops.nn import convert

BACKENDS = ["cpp", "reference"]


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


def _compare(orig: nn.Module, ours: nn.Module, x: torch.Tensor, backend: str, atol=1e-4, rtol=1e-4):
    xa = x.clone().requires_grad_(True)
    expect = orig(xa)
    expect.backward(torch.ones_like(expect))
    xb = x.clone().requires_grad_(True)
    with rankops.use_backend(backend):
        got = ours(xb)
        got.backward(torch.ones_like(got))
    torch.testing.assert_close(got, expect, atol=atol, rtol=rtol)
    torch.testing.assert_close(xb.grad, xa.grad, atol=atol * 10, rtol=rtol * 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make,conv",
    [
        (lambda: TRCrossNet(29, 3), convert.crossnet_from_torchrec),
        (lambda: TRLowRankCrossNet(29, 3, 5), convert.lowrank_crossnet_from_torchrec),
        (lambda: TRVectorCrossNet(29, 3), convert.vector_crossnet_from_torchrec),
        (lambda: TRLowRankMixtureCrossNet(29, 2, 4, 5), convert.mixture_crossnet_from_torchrec),
        (lambda: TRLowRankMixtureCrossNet(29, 2, 1, 3), convert.mixture_crossnet_from_torchrec),
        (lambda: DCCrossNet(29, 3, "matrix"), convert.crossnet_from_deepctr),
        (lambda: DCCrossNet(29, 3, "vector"), convert.crossnet_from_deepctr),
        (lambda: DCCrossNetMix(29, 2, 3, 4), convert.crossnetmix_from_deepctr),
    ],
    ids=["tr-CrossNet", "tr-LowRank", "tr-Vector", "tr-Mixture", "tr-Mixture-K1", "dc-matrix", "dc-vector", "dc-Mix"],
)
def test_crossnet_converters(make, conv, backend):
    torch.manual_seed(0)
    orig = make()
    ours = conv(orig.state_dict())
    assert isinstance(ours, CrossNet)
    _compare(orig, ours, torch.randn(11, 29), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split_half,sizes", [(True, (8, 6, 5)), (False, (4, 3))])
def test_cin_converter(split_half, sizes, backend):
    torch.manual_seed(0)
    orig = DCCIN(7, sizes, split_half=split_half)
    ours = convert.cin_from_deepctr(orig.state_dict(), split_half=split_half)
    assert isinstance(ours, CIN) and ours.output_dim == orig(torch.randn(2, 7, 4)).shape[1]
    _compare(orig, ours, torch.randn(9, 7, 4), backend)


def test_converter_errors():
    with pytest.raises(ValueError, match="parameterization"):
        convert.crossnet_from_deepctr(DCCrossNet(1, 2, "vector").state_dict())
    with pytest.raises(KeyError, match="kernels"):
        convert.crossnet_from_torchrec({"weight": torch.zeros(3, 3)})
    # a split_half that does not match the weights' shapes is refused by load_state_dict
    with pytest.raises(RuntimeError, match="size mismatch"):
        convert.cin_from_deepctr(DCCIN(5, (4, 4), split_half=True).state_dict(), split_half=False)


@pytest.mark.parametrize("variant", ["v2", "v1", "lowrank", "mix"])
def test_crossnet_layer(variant):
    net = CrossNet(13, 3, variant=variant, low_rank=2, num_experts=3)
    x = torch.randn(6, 13, requires_grad=True)
    with rankops.use_backend("cpp"):
        y = net(x)
        y.sum().backward()
    assert y.shape == (6, 13) and torch.isfinite(y).all()
    assert all(p.grad is not None for p in net.parameters() if variant != "mix" or p is not net.gate)
    with rankops.use_backend("reference"):
        torch.testing.assert_close(net(x), y, atol=1e-5, rtol=1e-5)
    assert variant in repr(net)


def test_layer_errors():
    with pytest.raises(ValueError, match="variant"):
        CrossNet(4, 2, variant="v3")
    with pytest.raises(ValueError, match="low_rank"):
        CrossNet(4, 2, variant="lowrank", low_rank=0)
    with pytest.raises(ValueError, match="num_experts"):
        CrossNet(4, 2, variant="mix", num_experts=0)
    with pytest.raises(ValueError, match=r"layer_sizes\[1\] = 5"):
        CIN(4, (6, 5, 3), split_half=True)
    CIN(4, (6, 4, 3), split_half=True)  # an odd last layer is fine: it is not split
    CIN(4, (5, 3), split_half=False)
    with pytest.raises(ValueError, match="x0"):
        CIN(4, (6,))(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="activation"):
        CIN(4, (6,), activation="swishy")
