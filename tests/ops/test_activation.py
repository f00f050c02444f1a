"""rankops.dice (Dice on batch statistics): the cpp and Triton kernels against the reference and against
autograd through the reference's own statistics, forward, statistics and both gradients; masked
rows, an all-masked batch, bf16 / fp16; opcheck and torch.compile; DIN's training path uses it."""

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


def _run(x, mask, alpha, grad):
    x, alpha = x.detach().clone().requires_grad_(True), alpha.detach().clone().requires_grad_(True)
    y, mean, var = dice(x, mask, alpha)
    y.backward(grad)
    return y, mean, var, x.grad, alpha.grad


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,H,valid", [(1000, 80, 0.7), (37, 5, 0.5), (3, 1, 1.0), (600, 40, 0.0)],
                         ids=["chunks", "odd", "tiny", "all-masked"])
def test_kernel_matches_reference(backend, device, dtype, N, H, valid):
    x, mask, alpha = _inputs(N, H, dtype, valid)
    grad = torch.randn(N, H).to(dtype)
    with on("reference", "cpu"):
        expect = _run(x, mask, alpha, grad)
    with on(backend, device):
        got = _run(x, mask, alpha, grad)
    t = tol(dtype, scale=2.0)
    for name, a, e in zip(["y", "mean", "var", "dx", "dalpha"], got, expect):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        scale = max(1.0, e.float().abs().max().item()) if name == "dalpha" else 1.0  # a sum over N rows
        assert_close(a, e, atol=t["atol"] * scale, rtol=t["rtol"], name=name)


def test_backward_formula_is_autograd_through_the_statistics():
    """The explicit formula (kernels and reference) equals autograd of the reference forward, in
    float64 arithmetic via float32 inputs, including padded rows whose gradient is nonzero."""
    x, mask, alpha = _inputs(50, 7, torch.float32, 0.6)
    x.requires_grad_(True)
    alpha.requires_grad_(True)
    y, mean, var = ref.dice(x, mask, alpha, 1e-8)
    grad = torch.randn_like(y)
    dx, dalpha = torch.autograd.grad(y, (x, alpha), grad)
    fdx, fdalpha = ref.dice_backward(grad, x.detach(), mask, alpha.detach(), mean, var, 1e-8)
    assert_close(fdx, dx, atol=1e-5, rtol=1e-4, name="dx")
    assert_close(fdalpha, dalpha, atol=1e-4, rtol=1e-4, name="dalpha")
    assert dx[~mask].abs().sum() > 0  # a masked row is gated by the statistics: its gradient is not 0
    with rankops.use_backend("cpp"):
        kdx, kdalpha = torch.ops.rankops.dice_backward(grad, x.detach(), mask, alpha.detach(), mean, var, 1e-8)
    assert_close(kdx, dx, atol=1e-5, rtol=1e-4, name="cpp dx")


def test_opcheck_and_compile():
    x, mask, alpha = _inputs(64, 8, torch.float32)
    torch.library.opcheck(torch.ops.rankops.dice.default, (x, mask, alpha, 1e-8))
    xr = x.clone().requires_grad_(True)
    eager = dice(xr, mask, alpha)[0]
    compiled = torch.compile(lambda a, m, al: dice(a, m, al)[0], fullgraph=True)(xr, mask, alpha)
    assert_close(compiled, eager, atol=1e-6, rtol=1e-6, name="compiled")


@pytest.mark.parametrize("bad,match", [
    (dict(mask=torch.ones(5, dtype=torch.int64)), "mask must be a bool"),
    (dict(mask=torch.ones(4, dtype=torch.bool)), "mask must be a bool"),
    (dict(alpha=torch.zeros(3)), "alpha must have 8"),
    (dict(x=torch.zeros(5, 8, dtype=torch.int32)), "float32"),
])
def test_bad_input(bad, match):
    args = dict(x=torch.zeros(5, 8), mask=torch.ones(5, dtype=torch.bool), alpha=torch.zeros(8)) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        dice(args["x"], args["mask"], args["alpha"])


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
