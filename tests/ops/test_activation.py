"""rankops.dice (Dice on batch statistics): the cpp and Triton kernels against the reference and against
autograd through the reference's own statistics, forward, statistics and every gradient (x, alpha and
BatchNorm's affine weight / bias); masked rows, an all-masked batch, bf16 / fp16; opcheck and
torch.compile; DIN's training path uses it."""

from __future__ import annotations

import copy

import pytest
import torch

import rankops
from rankops.ops.activation import dice
from rankops.ops.activation import reference as ref
from tests.utils import DTYPES, assert_close, backend_devices, on, tol

KERNELS = backend_devices("cpp", "triton")


def _inputs(N, H, dtype, valid=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, H, generator=g) * 2 + 0.5).to(dtype)
    mask = torch.rand(N, generator=g) < valid
    alpha = torch.rand(H, generator=g).to(dtype)
    return x, mask, alpha


def _affine(H, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(H, generator=g) * 1.5 + 0.25).to(dtype), (torch.randn(H, generator=g) * 0.5).to(dtype)


def _run(x, mask, alpha, grad, affine=None):
    x, alpha = x.detach().clone().requires_grad_(True), alpha.detach().clone().requires_grad_(True)
    wb = [t.detach().clone().requires_grad_(True) for t in affine] if affine else [None, None]
    y, mean, var = dice(x, mask, alpha, weight=wb[0], bias=wb[1])
    y.backward(grad)
    return [y, mean, var, x.grad, alpha.grad] + ([wb[0].grad, wb[1].grad] if affine else [])


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,H,valid", [(1000, 80, 0.7), (37, 5, 0.5), (3, 1, 1.0), (600, 40, 0.0)],
                         ids=["chunks", "odd", "tiny", "all-masked"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_kernel_matches_reference(backend, device, dtype, N, H, valid, affine):
    x, mask, alpha = _inputs(N, H, dtype, valid)
    wb = _affine(H, dtype) if affine else None
    grad = torch.randn(N, H).to(dtype)
    with on("reference", "cpu"):
        expect = _run(x, mask, alpha, grad, wb)
    with on(backend, device):
        got = _run(x, mask, alpha, grad, wb)
    t = tol(dtype, scale=2.0)
    for name, a, e in zip(["y", "mean", "var", "dx", "dalpha", "dweight", "dbias"], got, expect):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        scale = max(1.0, e.float().abs().max().item()) if name.startswith("d") and name != "dx" else 1.0  # sums
        assert_close(a, e, atol=t["atol"] * scale, rtol=t["rtol"], name=name)


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_backward_formula_is_autograd_through_the_statistics(affine):
    """The explicit formula (kernels and reference) equals autograd of the reference forward,
    including padded rows whose gradient is nonzero and the affine pair's gradients."""
    x, mask, alpha = _inputs(50, 7, torch.float32, 0.6)
    w, b = _affine(7, torch.float32) if affine else (torch.ones(7), torch.zeros(7))
    leaves = [t.requires_grad_(True) for t in (x, alpha, w, b)]
    y, mean, var = ref.dice(x, mask, alpha, w, b, 1e-8)
    grad = torch.randn_like(y)
    expect = torch.autograd.grad(y, leaves, grad)
    plain = [t.detach() for t in leaves]
    formula = ref.dice_backward(grad, plain[0], mask, *plain[1:], mean, var, 1e-8)
    with rankops.use_backend("cpp"):
        kernel = torch.ops.rankops.dice_backward(grad, plain[0], mask, *plain[1:], mean, var, 1e-8)
    for name, f, k, e in zip(["dx", "dalpha", "dweight", "dbias"], formula, kernel, expect):
        assert_close(f, e, atol=1e-4, rtol=1e-4, name=name)
        assert_close(k, e, atol=1e-4, rtol=1e-4, name=f"cpp {name}")
    assert expect[0][~mask].abs().sum() > 0  # a masked row is gated by the statistics: its gradient is not 0


def test_affine_is_batchnorm_inside_the_gate():
    """weight / bias act as BatchNorm1d's affine: the same y as sigmoid(bn(x)) gating with torch's
    own BatchNorm (training mode, every row valid), and its gradients."""
    x, _, alpha = _inputs(300, 6, torch.float32)
    bn = torch.nn.BatchNorm1d(6, eps=1e-5).train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(6) + 0.5)
        bn.bias.copy_(torch.randn(6))
    xr = x.clone().requires_grad_(True)
    p = torch.sigmoid(bn(xr))
    expect = alpha * (1 - p) * xr + p * xr
    grad = torch.randn_like(x)
    ex, ew, eb = torch.autograd.grad(expect, (xr, bn.weight, bn.bias), grad)
    xk = x.clone().requires_grad_(True)
    w, b = bn.weight.detach().clone().requires_grad_(True), bn.bias.detach().clone().requires_grad_(True)
    with rankops.use_backend("cpp"):
        y, mean, var = dice(xk, torch.ones(300, dtype=torch.bool), alpha, 1e-5, weight=w, bias=b)
    kx, kw, kb = torch.autograd.grad(y, (xk, w, b), grad)
    assert_close(y, expect, atol=1e-5, rtol=1e-5, name="y")
    for name, k, e in (("dx", kx, ex), ("dweight", kw, ew), ("dbias", kb, eb)):
        assert_close(k, e, atol=1e-4, rtol=1e-4, name=name)
    assert_close(mean, x.mean(0), atol=1e-6, rtol=1e-5, name="mean")
    assert_close(var, x.var(0, unbiased=False), atol=1e-5, rtol=1e-5, name="var")


def test_opcheck_and_compile():
    x, mask, alpha = _inputs(64, 8, torch.float32)
    w, b = _affine(8, torch.float32)
    torch.library.opcheck(torch.ops.rankops.dice.default, (x, mask, alpha, w, b, 1e-8))
    xr = x.clone().requires_grad_(True)
    eager = dice(xr, mask, alpha)[0]
    compiled = torch.compile(lambda a, m, al: dice(a, m, al)[0], fullgraph=True)(xr, mask, alpha)
    assert_close(compiled, eager, atol=1e-6, rtol=1e-6, name="compiled")


@pytest.mark.parametrize("bad,match", [
    (dict(mask=torch.ones(5, dtype=torch.int64)), "mask must be a bool"),
    (dict(mask=torch.ones(4, dtype=torch.bool)), "mask must be a bool"),
    (dict(alpha=torch.zeros(3)), "alpha must have 8"),
    (dict(weight=torch.ones(3)), "weight must be a floating \\[8\\]"),
    (dict(bias=torch.zeros(8, dtype=torch.int64)), "bias must be a floating"),
    (dict(x=torch.zeros(5, 8, dtype=torch.int32)), "float32"),
])
def test_bad_input(bad, match):
    args = dict(x=torch.zeros(5, 8), mask=torch.ones(5, dtype=torch.bool), alpha=torch.zeros(8), weight=None,
                bias=None) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        dice(args["x"], args["mask"], args["alpha"], weight=args["weight"], bias=args["bias"])


def test_din_training_path_is_unchanged_by_the_kernel():
    """DINAttention with Dice in training mode: the same output, gradients and running statistics on
    cpp (rankops.dice kernels) as on the reference backend."""
    torch.manual_seed(0)
    att = rankops.nn.DINAttention(8, hidden=(12, 6), activation="dice").train()
    q, keys = torch.randn(9, 8), torch.randn(9, 11, 8)
    lengths = torch.tensor([0, 11, 3, 5, 7, 1, 11, 2, 9])
    outs = {}
    for backend in ("reference", "cpp"):
        a = copy.deepcopy(att)
        qq, kk = q.clone().requires_grad_(True), keys.clone().requires_grad_(True)
        with rankops.use_backend(backend):
            out = a(qq, kk, lengths)
            out.square().sum().backward()
        outs[backend] = [out, qq.grad, kk.grad, *(p.grad for p in a.parameters()), *a.buffers()]
    for i, (c, r) in enumerate(zip(outs["cpp"], outs["reference"])):
        assert_close(c, r, atol=1e-5, rtol=1e-4, name=str(i))
