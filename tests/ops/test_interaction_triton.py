"""Triton interaction kernels against the reference: forward and gradients, every dtype, odd shapes.

Called two ways: the launchers directly (rankops.ops.interaction.triton) and the public ops under
``rankops.use_backend("triton")`` with autograd. Without a GPU they run under TRITON_INTERPRET
(tests/conftest.py); the shapes are small because each program instance costs ~0.5 ms there, and
each shape still covers several programs where it matters (ragged last block, several field tiles).
"""

from __future__ import annotations

import pytest
import torch

import rankops
from rankops.ops.interaction import reference as ref
from tests.utils import DTYPES, assert_close, on, tol

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, F, D): F=2 and D=1 (the smallest), F=1 (no pair without self_interaction), D=13 (ragged D),
# B=1, F=39 D=16 (a benchmark shape: field tiles A=32 + C=16), F=50 (A=32 + C=32), F=70 (the
# tile-pair kernels), B=20 F=26 (several dot programs), B=70 D=16 (several FM programs, the last
# ragged).
SHAPES = [(3, 2, 1), (2, 1, 5), (4, 5, 13), (1, 7, 8), (3, 39, 16), (2, 50, 13), (2, 70, 20), (20, 26, 16),
          (70, 3, 16)]


@pytest.fixture(scope="module")
def K():
    if DEVICE == "cpu":
        import os

        assert os.environ.get("TRITON_INTERPRET") == "1", "conftest should have set TRITON_INTERPRET=1"
    from rankops.ops.interaction import triton as k

    return k


def _x(B, F, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # scale 0.5: FM's s*s - q cancels; keep fp32 rounding well inside the fp32 tolerance
    return (0.5 * torch.randn(B, F, D, generator=g)).to(dtype).to(DEVICE)


def _g(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,F,D", SHAPES)
@pytest.mark.parametrize("reduce", [True, False], ids=["reduce", "keepdim"])
def test_fm_launchers(K, B, F, D, reduce, dtype):
    x = _x(B, F, D, dtype)
    out = K.fm_interaction(x, reduce)
    assert out.dtype == dtype and out.shape == (B, 1 if reduce else D)
    assert_close(out, ref.fm_interaction(x, reduce), **tol(dtype), name="fm forward")
    grad = _g(out.shape, dtype)
    gx = K.fm_interaction_backward(grad, x, reduce)
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close(gx, ref.fm_interaction_backward(grad, x, reduce), **tol(dtype), name="fm backward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,F,D", SHAPES)
@pytest.mark.parametrize("self_interaction", [False, True], ids=["strict", "self"])
def test_dot_launchers(K, B, F, D, self_interaction, dtype):
    x = _x(B, F, D, dtype)
    out = K.dot_interaction(x, self_interaction)
    P = F * (F + 1) // 2 if self_interaction else F * (F - 1) // 2
    assert out.dtype == dtype and out.shape == (B, P)
    assert_close(out, ref.dot_interaction(x, self_interaction), **tol(dtype), name="dot forward")
    grad = _g(out.shape, dtype)
    gx = K.dot_interaction_backward(grad, x, self_interaction)
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close(gx, ref.dot_interaction_backward(grad, x, self_interaction), **tol(dtype),
                 name="dot backward")


def test_dot_order_is_row_major_lower_triangle(K):
    # Exact small integers: out[p] must be <x_i, x_j> for (1,0),(2,0),(2,1),(3,0),...
    B, F, D = 2, 5, 3
    x = torch.arange(B * F * D, dtype=torch.float32, device=DEVICE).reshape(B, F, D) % 7
    for self_interaction in (False, True):
        i, j = ref.tril_indices(F, self_interaction)
        want = torch.einsum("bpd,bpd->bp", x[:, i], x[:, j])
        assert torch.equal(K.dot_interaction(x, self_interaction), want)


@pytest.mark.parametrize("F,D", [(4, 3), (39, 16)])
def test_empty_batch(K, F, D):
    x = torch.empty(0, F, D, device=DEVICE)
    assert K.fm_interaction(x, True).shape == (0, 1)
    assert K.fm_interaction(x, False).shape == (0, D)
    assert K.fm_interaction_backward(torch.empty(0, 1, device=DEVICE), x, True).shape == (0, F, D)
    assert K.dot_interaction(x, False).shape == (0, F * (F - 1) // 2)
    assert K.dot_interaction(x, True).shape == (0, F * (F + 1) // 2)
    assert K.dot_interaction_backward(torch.empty(0, F * (F - 1) // 2, device=DEVICE), x, False).shape == (0, F, D)


def test_empty_dim(K):
    x = torch.empty(3, 4, 0, device=DEVICE)
    assert torch.equal(K.fm_interaction(x, True), torch.zeros(3, 1, device=DEVICE))
    assert torch.equal(K.dot_interaction(x, False), torch.zeros(3, 6, device=DEVICE))


# ---------------------------------------------------------------------------------------------
# through the public ops, with autograd


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,F,D", [(5, 3, 13), (3, 39, 16)])
def test_public_fm(B, F, D, dtype):
    backend = "triton"
    for reduce in (True, False):
        x = _x(B, F, D, dtype).requires_grad_()
        xr = x.detach().clone().requires_grad_()
        with on(backend, DEVICE):
            out = rankops.fm_interaction(x, reduce=reduce)
        want = ref.fm_interaction(xr, reduce)
        assert_close(out, want, **tol(dtype), name="fm forward")
        grad = _g(out.shape, dtype)
        with on(backend, DEVICE):
            out.backward(grad)
        want.backward(grad)
        assert_close(x.grad, xr.grad, **tol(dtype), name="fm grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,F,D,self_interaction", [(4, 2, 1, False), (3, 39, 16, True), (2, 6, 13, False)])
def test_public_dot(B, F, D, self_interaction, dtype):
    x = _x(B, F, D, dtype).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    with on("triton", DEVICE):
        out = rankops.dot_interaction(x, self_interaction=self_interaction)
    want = ref.dot_interaction(xr, self_interaction)
    assert_close(out, want, **tol(dtype), name="dot forward")
    grad = _g(out.shape, dtype)
    with on("triton", DEVICE):
        out.backward(grad)
    want.backward(grad)
    assert_close(x.grad, xr.grad, **tol(dtype), name="dot grad")


def test_public_empty_batch():
    x = torch.empty(0, 4, 8, device=DEVICE, requires_grad=True)
    with on("triton", DEVICE):
        out = rankops.dot_interaction(x).sum() + rankops.fm_interaction(x).sum()
        out.backward()
    assert x.grad.shape == x.shape


def test_public_non_contiguous():
    x = _x(6, 13, 5, torch.float32).transpose(1, 2)  # [6, 5, 13]: F=5, D=13, strided
    with on("triton", DEVICE):
        assert_close(rankops.fm_interaction(x, reduce=False), ref.fm_interaction(x, False), **tol(torch.float32))
        assert_close(rankops.dot_interaction(x), ref.dot_interaction(x, False), **tol(torch.float32))


# ---------------------------------------------------------------------------------------------
# configs and AOT specs (pure Python, no kernel runs)


def test_plans_are_valid(K):
    for F in (1, 2, 13, 26, 32, 33, 39, 48, 49, 64, 65, 200, 400):
        for D in (1, 13, 16, 64, 128, 200, 1024):
            for reduce in (True, False):
                c = dict(K._fm_plan(F, D, reduce, backward=False).constexprs)
                assert c["BLOCK_D"] >= D and c["BLOCK_B"] >= 1 and c["BLOCK_F"] <= max(4, F)
            for dtype in DTYPES:
                for bwd in (False, True):
                    plan = K._dot_plan(F, D, dtype, False, bwd)
                    c = dict(plan.constexprs)
                    dims = [v for k, v in c.items() if k in ("BLOCK_F", "BLOCK_A", "BLOCK_C", "BLOCK_K")]
                    assert min(dims) >= 16, "tl.dot needs M, N, K >= 16"
                    assert all(v & (v - 1) == 0 for v in dims + [c["BLOCK_B"]])
                    if F <= K.SMALL_F:  # tiles A and C cover every field
                        assert c["BLOCK_A"] + (c["BLOCK_C"] if c["HAS_C"] else 0) >= F
                    assert plan.block_b == c["BLOCK_B"]


def test_aot_specs(K):
    specs = K.aot_specs()
    kernels = {s["kernel"] for s in specs}
    assert kernels == {"_fm_fwd_kernel", "_fm_bwd_kernel", "_dot_fwd_small_kernel", "_dot_bwd_small_kernel",
                       "_dot_fwd_kernel", "_dot_bwd_kernel"}
    for s in specs:
        names = s["fn"].arg_names
        assert set(s["signature"]) == set(names), s["config"]
        assert all(s["signature"][n] == "constexpr" for n in s["constexprs"])
        assert s["num_warps"] in (1, 2, 4, 8)
    assert len({(s["kernel"], s["config"]) for s in specs}) == len(specs), "configs must be unique"


def test_opcheck_on_triton():
    """The custom ops, served by the Triton launchers, pass opcheck (schema, fake impl, autograd
    registration). torch.compile of the ops is covered backend-independently in test_interaction.py."""
    x = _x(3, 5, 13, torch.float32).requires_grad_()
    with on("triton", DEVICE):
        torch.library.opcheck(torch.ops.rankops.fm_interaction.default, (x, True))
        torch.library.opcheck(torch.ops.rankops.dot_interaction.default, (x, False))
