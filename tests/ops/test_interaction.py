"""interaction family (fm_interaction, dot_interaction): every backend against the reference,
forward and gradient, three dtypes, odd shapes; op registration checks; bad input."""

import pytest
import torch

import rankops
from rankops.ops.interaction import num_pairs, reference
from tests.utils import DTYPES, assert_close, backend_devices, on, tol

KERNELS = backend_devices("cpp", "triton", "cuda")

# (B, F, D): odd shapes beside regular ones; F=2 is the smallest dot interaction, D=1 and D=13 are
# not vector multiples, F=39/D=16 is the Criteo DeepFM shape, D=64 and D=100 take the CPU FM kernels' wide-row
# path (rows read in order), F=70 spans several 32-wide tiles.
SHAPES = [(1, 2, 1), (3, 2, 13), (5, 7, 16), (4, 39, 16), (2, 27, 64), (3, 5, 100), (2, 70, 20)]


def _x(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def _check_fwd_bwd(op, ref_fwd, flag, backend, device, shape, dtype):
    x = _x(shape, dtype, device).requires_grad_()
    with on(backend, device):
        out = op(x, flag)
    expected = ref_fwd(x.detach().float().cpu(), flag)
    # fp32 sums over F (and D): scale the tolerance with the number of terms in each output.
    scale = max(1.0, shape[1] * shape[2] / 64) if dtype == torch.float32 else max(1.0, shape[2] / 16)
    assert out.dtype == dtype and out.device == x.device
    assert_close(out, expected, **tol(dtype, scale), name=f"{op.__name__} fwd")

    grad = _x(out.shape, dtype, device, seed=1)
    with on(backend, device):
        (gx,) = torch.autograd.grad(out, x, grad)
    xr = x.detach().float().cpu().requires_grad_()
    (gx_ref,) = torch.autograd.grad(ref_fwd(xr, flag), xr, grad.float().cpu())
    assert_close(gx, gx_ref, **tol(dtype, scale * 2), name=f"{op.__name__} grad x")


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduce", [True, False])
def test_fm_interaction(backend, device, dtype, shape, reduce):
    _check_fwd_bwd(rankops.fm_interaction, reference.fm_interaction, reduce, backend, device, shape, dtype)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction(backend, device, dtype, shape, self_interaction):
    _check_fwd_bwd(rankops.dot_interaction, reference.dot_interaction, self_interaction, backend, device, shape, dtype)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_non_contiguous_and_empty_batch(backend, device):
    x = _x((6, 16, 9), torch.float32, device).transpose(1, 2)  # [6, 9, 16], not contiguous
    assert not x.is_contiguous()
    with on(backend, device):
        assert_close(rankops.fm_interaction(x), reference.fm_interaction(x.cpu(), True), 1e-5, 1e-5)
        assert_close(rankops.dot_interaction(x), reference.dot_interaction(x.cpu(), False), 1e-4, 1e-5)
        empty = torch.zeros(0, 5, 8, device=device)
        assert rankops.fm_interaction(empty).shape == (0, 1)
        assert rankops.dot_interaction(empty).shape == (0, 10)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_dot_interaction_pair_order(backend, device):
    """Row-major lower triangle, checked on one-hot fields where each pair's product is known."""
    F = 5
    x = torch.zeros(1, F, F, device=device)
    for f in range(F):
        x[0, f, f] = 1.0
        x[0, f, 0] += f + 1.0  # field f = e_f + (f+1) e_0: <x_i, x_j> = (i+1)(j+1) for i != j (i, j > 0)
    with on(backend, device):
        out = rankops.dot_interaction(x)[0].cpu()
    expected = []
    for i in range(1, F):
        for j in range(i):
            expected.append(float(x[0, i].cpu() @ x[0, j].cpu()))
    assert out.tolist() == pytest.approx(expected)
    assert out.numel() == num_pairs(F)


@pytest.mark.parametrize("op,flag", [("fm_interaction", True), ("fm_interaction", False),
                                     ("dot_interaction", False), ("dot_interaction", True)])
def test_opcheck(op, flag):
    x = _x((4, 6, 8), torch.float32, "cpu").requires_grad_()
    torch.library.opcheck(getattr(torch.ops.rankops, op), (x, flag))


def test_backward_ops_opcheck():
    x = _x((3, 5, 4), torch.float32, "cpu")
    torch.library.opcheck(torch.ops.rankops.fm_interaction_backward, (torch.randn(3, 1), x, True))
    torch.library.opcheck(torch.ops.rankops.dot_interaction_backward, (torch.randn(3, 10), x, False))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph(backend):
    def f(x):
        return rankops.fm_interaction(x).sum() + rankops.dot_interaction(x, True).square().sum()

    x = _x((8, 6, 5), torch.float32, "cpu").requires_grad_()
    with rankops.use_backend(backend):
        expected = f(x)
        (g_expected,) = torch.autograd.grad(expected, x)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        (g,) = torch.autograd.grad(out, x)
    assert_close(out, expected, 1e-5, 1e-5)
    assert_close(g, g_expected, 1e-5, 1e-5)


def test_backend_is_used():
    """The dispatcher really reaches the selected implementation (not a silent fallback)."""
    from rankops.ops import _dispatch

    seen = []
    real = _dispatch._resolve

    def spy(path):
        seen.append(path)
        return real(path)

    x = _x((2, 3, 4), torch.float32, "cpu")
    _dispatch._resolve = spy
    try:
        with rankops.use_backend("cpp"):
            rankops.fm_interaction(x)
        with rankops.use_backend("reference"):
            rankops.dot_interaction(x)
    finally:
        _dispatch._resolve = real
    assert seen == ["torch.ops:rankops_C.fm_interaction", "rankops.ops.interaction.reference:dot_interaction"]


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("op", [rankops.fm_interaction, rankops.dot_interaction])
def test_bad_input(op):
    with pytest.raises(ValueError, match="x must be 3-D"):
        op(torch.randn(4, 5))
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        op(torch.ones(2, 3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        op([[[1.0]]])


def test_dot_interaction_needs_two_fields():
    with pytest.raises(ValueError, match="at least 2 fields"):
        rankops.dot_interaction(torch.randn(4, 1, 8))
    assert rankops.dot_interaction(torch.randn(4, 1, 8), self_interaction=True).shape == (4, 1)


def test_backend_that_cannot_serve_the_device():
    x = torch.randn(2, 3, 4)
    with rankops.use_backend("cuda"), pytest.raises(ValueError, match="backend 'cuda' cannot serve"):
        rankops.fm_interaction(x)
    with pytest.raises(ValueError, match="unknown rankops backend"):
        with rankops.use_backend("fast"):
            pass


def test_env_default(monkeypatch):
    monkeypatch.setenv("RANKOPS_BACKEND", "reference")
    assert rankops.current_backend() == "reference"
    with rankops.use_backend("cpp"):
        assert rankops.current_backend() == "cpp"
    monkeypatch.setenv("RANKOPS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown rankops backend"):
        rankops.current_backend()


def test_torch_compile_inductor_default():
    """The default compiler (inductor) keeps the op opaque and calls our kernel inside its graph."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Unflatten(1, (4, 2)))

    def f(x):
        z = model(x)
        return torch.cat([rankops.fm_interaction(z), rankops.dot_interaction(z)], 1)

    x = torch.randn(16, 8, requires_grad=True)
    with rankops.use_backend("cpp"):
        expected = f(x)
        out = torch.compile(f, fullgraph=True)(x)
        (g,) = torch.autograd.grad(out.sum(), x)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    assert_close(out, expected, 1e-5, 1e-5)
    assert_close(g, g_expected, 1e-5, 1e-5)


# Shapes that exercise the GPU kernels' layout edges: F not a multiple of 16 with a batch that is
# not a multiple of the samples per block (odd output offsets, P=351 at F=27), D past one tile,
# samples beyond 48 KB of shared memory (opt-in path) and beyond the opt-in limit (warp fallback).
GPU_SHAPES = [(1001, 27, 13), (1001, 39, 16), (257, 27, 200), (64, 100, 256), (8, 400, 256)]


@pytest.mark.parametrize("backend,device", [p for p in backend_devices("cuda", "triton") if p.values[1] == "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
@pytest.mark.parametrize("flag", [False, True])
def test_gpu_layout_edges(backend, device, dtype, shape, flag):
    _check_fwd_bwd(rankops.fm_interaction, reference.fm_interaction, flag, backend, device, shape, dtype)
    _check_fwd_bwd(rankops.dot_interaction, reference.dot_interaction, flag, backend, device, shape, dtype)
