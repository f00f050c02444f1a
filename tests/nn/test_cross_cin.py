"""rankops.nn.CrossNet / CIN and the converters from TorchRec and DeepCTR-Torch state dicts.

The TorchRec and DeepCTR-Torch layers are re-implemented from their published formulas and parameter
layouts in bench/baselines.py (neither library is a dependency; the benchmarks time the same
classes): each converter must reproduce the original layer's output and input gradient from its
state dict alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rankops
from bench.baselines import (DCCIN, DCCrossNet, DCCrossNetMix, TRCrossNet, TRLowRankCrossNet,
                             TRLowRankMixtureCrossNet, TRVectorCrossNet)
from rankops.nn import CIN, CrossNet
from rankops.nn import convert

BACKENDS = ["cpp", "reference"]


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
