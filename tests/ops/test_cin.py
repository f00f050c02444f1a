"""cin_layer: every backend against the reference, forward and every gradient, fp32 / fp16 / bf16,
odd sizes (H=1, M=1, B=1, D=1, several sample and K blocks), non-contiguous inputs, opcheck,
torch.compile(fullgraph=True), and the errors on bad input."""

from __future__ import annotations

import os

import pytest
import torch

from rankops.ops.cin import cin_layer
from tests.utils import DTYPES, assert_close, backend_devices, on, tol

KERNELS = backend_devices("cpp", "triton", "cuda")

# (B, H, M, D, Hn). The first spans 3 sample blocks and 2 K blocks of the cpp kernel (S = 256/D
# samples, 512/M h's per block); it costs ~20 s per case under the Triton interpreter, which gets
# the second (2 row tiles, 8 K tiles, a partial one included) instead.
BIG = pytest.param((37, 20, 39, 16, 12), id="B37-H20-M39-D16")
MID = pytest.param((5, 6, 39, 16, 12), id="B5-H6-M39-D16")
SMALL = [pytest.param(s, id=i) for s, i in [((2, 1, 1, 1, 1), "H1-M1-D1"), ((1, 4, 3, 5, 3), "B1"),
                                            ((3, 7, 1, 9, 2), "M1")]]


def _inputs(B, H, M, D, Hn, dtype, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    return [rnd(B, H, D), rnd(B, M, D), rnd(Hn, H, M, scale=(H * M) ** -0.5), rnd(Hn) if bias else None]


def _fwd_bwd(args, grad, backend, device):
    leaves = [a.detach().clone().requires_grad_(True) if a is not None else None for a in args]
    with on(backend, device):
        out = cin_layer(*leaves)
        out.backward(grad)
    return out, [a.grad for a in leaves if a is not None]


def _check(out, grads, ref_out, ref_grads, dtype):
    def close(a, e, name):
        t = tol(dtype)
        scale = max(1.0, e.detach().float().abs().max().item())  # GEMM error scales with its output
        assert_close(a, e, atol=t["atol"] * scale, rtol=t["rtol"], name=name)

    close(out, ref_out, "out")
    assert len(grads) == len(ref_grads)
    for n, a, e in zip(["xk", "x0", "weight", "bias"], grads, ref_grads):
        assert a is not None and a.dtype == e.dtype, n
        close(a, e, f"grad {n}")


@pytest.mark.parametrize("backend,device,shape", [
    pytest.param(*bd.values, s.values[0], id=f"{bd.id}-{s.id}", marks=bd.marks)
    for bd in KERNELS for s in ([BIG] if bd.values[0] in ("cpp", "cuda") else [MID]) + SMALL
])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(shape, dtype, backend, device):
    args = _inputs(*shape, dtype, device)
    B, H, M, D, Hn = shape
    grad = torch.randn(B, Hn, D, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    ref_out, ref_grads = _fwd_bwd(args, grad, "reference", device)
    out, grads = _fwd_bwd(args, grad, backend, device)
    assert out.shape == (B, Hn, D) and out.dtype == dtype
    _check(out, grads, ref_out, ref_grads, dtype)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_no_bias_and_non_contiguous(backend, device):
    B, H, M, D, Hn = 6, 5, 7, 8, 4
    xk, x0, w, _ = _inputs(B, H, M, D, Hn, torch.float32, device, bias=False)
    # xk stored [B, D, H] and viewed back, x0 a strided slice, weight stored [M, H, Hn]
    xk_nc = xk.transpose(1, 2).contiguous().transpose(1, 2)
    x0_nc = torch.stack([x0, x0], 3)[..., 1]
    w_nc = w.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    assert not (xk_nc.is_contiguous() or x0_nc.is_contiguous() or w_nc.is_contiguous())
    grad = torch.randn(B, D, Hn, device=device).transpose(1, 2)
    ref_out, ref_grads = _fwd_bwd([xk, x0, w, None], grad.contiguous(), "reference", device)
    out, grads = _fwd_bwd([xk_nc, x0_nc, w_nc, None], grad, backend, device)
    _check(out, grads, ref_out, ref_grads, torch.float32)


# CUDA kernels (csrc/cuda/cin.cu): the paths they branch on. (B, H, M, D, Hn) chosen so that
# - D % 8 == 0 (16-byte vectors for fp16/bf16 and fp32) / D % 4 == 0 only (vectors for fp32, scalar for
#   fp16/bf16) / odd D (scalar everywhere);
# - the 128-column blocks end in a partial one, K = H*M ends inside a K step (32 for the tensor cores,
#   16 for fp32), Hn <= 64 (64-map tiles) and Hn > 64 (128-map tiles, the second one partial);
# - B*D large enough that the weight gradient splits over several column ranges.
CUDA_SHAPES = [pytest.param(s, id=i) for s, i in [
    ((3, 7, 5, 3, 13), "odd-D3"),
    ((1, 1, 1, 1, 1), "all-1"),
    ((37, 20, 39, 16, 12), "B37-H20-M39-D16"),
    ((9, 13, 39, 8, 70), "D8-Hn70"),
    ((17, 5, 3, 12, 65), "D12-Hn65"),
    ((11, 9, 7, 4, 129), "D4-Hn129"),
    ((6, 33, 1, 5, 3), "M1-D5"),
    ((300, 10, 12, 16, 20), "dW-splits"),
    ((130, 3, 11, 1, 7), "D1-blocks"),
]]


def _cuda_case(shape, dtype, bias=True, inputs=None):
    B, H, M, D, Hn = shape
    args = inputs if inputs is not None else _inputs(*shape, dtype, "cuda", bias=bias)
    grad = torch.randn(B, Hn, D, generator=torch.Generator().manual_seed(1)).to(device="cuda", dtype=dtype)
    ref_out, ref_grads = _fwd_bwd(args, grad, "reference", "cuda")
    out, grads = _fwd_bwd(args, grad, "cuda", "cuda")
    assert out.shape == (B, Hn, D) and out.dtype == dtype
    _check(out, grads, ref_out, ref_grads, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", CUDA_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_shapes(shape, dtype):
    _cuda_case(shape, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_no_bias_and_b1(dtype):
    _cuda_case((1, 6, 39, 16, 10), dtype, bias=False)
    _cuda_case((1, 200, 39, 16, 200), dtype, bias=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_unaligned(dtype):
    """Contiguous tensors starting one element past a 16-byte boundary: the scalar loads."""
    B, H, M, D, Hn = 5, 6, 7, 16, 9

    def shifted(t):
        buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
        v = buf[1:].view(t.shape)
        v.copy_(t)
        return v

    args = [shifted(a) for a in _inputs(B, H, M, D, Hn, dtype, "cuda")]
    assert args[0].data_ptr() % 16 != 0
    _cuda_case((B, H, M, D, Hn), dtype, inputs=args)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [8, 16, 32, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_xdeepfm_layer(D, dtype):
    """A 200 -> 200 layer over M = 39 fields, as in xDeepFM's 200-200-200 CIN."""
    _cuda_case((96, 200, 39, D, 200), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_empty_batch(dtype):
    B, H, M, D, Hn = 0, 4, 3, 8, 5
    args = _inputs(B, H, M, D, Hn, dtype, "cuda")
    out, grads = _fwd_bwd(args, torch.zeros(B, Hn, D, device="cuda", dtype=dtype), "cuda", "cuda")
    assert out.shape == (B, Hn, D) and out.dtype == dtype
    for a, g in zip(args, grads):
        assert g.shape == a.shape and g.dtype == dtype and not g.any()


@pytest.mark.gpu
def test_cuda_weight_grad_deterministic():
    args = _inputs(257, 20, 39, 16, 30, torch.bfloat16, "cuda")
    grad = torch.randn(257, 30, 16, device="cuda", dtype=torch.bfloat16)
    with on("cuda", "cuda"):
        a = torch.ops.rankops.cin_layer_backward(grad, *args[:3])
        b = torch.ops.rankops.cin_layer_backward(grad, *args[:3])
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_reference_matches_deepctr_formula():
    """The reference against DeepCTR-Torch's formulation (einsum 'bhd,bmd->bhmd' + Conv1d(H*M, Hn, 1))
    and its hand-written backward against autograd, in fp64."""
    from rankops.ops.cin import reference as R

    B, H, M, D, Hn = 4, 3, 5, 6, 7
    xk, x0 = torch.randn(B, H, D, dtype=torch.float64), torch.randn(B, M, D, dtype=torch.float64)
    conv = torch.nn.Conv1d(H * M, Hn, 1).double()
    w = conv.weight.detach().reshape(Hn, H, M)
    leaves = [xk.clone().requires_grad_(True), x0.clone().requires_grad_(True)]
    z = torch.einsum("bhd,bmd->bhmd", *leaves).reshape(B, H * M, D)
    expect = conv(z)
    g = torch.randn_like(expect)
    expect.backward(g)
    torch.testing.assert_close(R.cin_layer(xk, x0, w, conv.bias.detach()).double(), expect.detach(), atol=1e-5, rtol=1e-5)
    dxk, dx0, dw, db = R.cin_layer_backward(g, xk, x0, w)
    for a, e in [(dxk, leaves[0].grad), (dx0, leaves[1].grad), (dw, conv.weight.grad.reshape(Hn, H, M)),
                 (db, conv.bias.grad)]:
        torch.testing.assert_close(a.double(), e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", backend_devices("cpp", "triton", "cuda", "reference"))
def test_opcheck(backend, device):
    xk, x0, w, b = (a.requires_grad_(True) for a in _inputs(3, 4, 5, 6, 3, torch.float32, device))
    g = torch.randn(3, 3, 6, device=device)
    with on(backend, device):
        torch.library.opcheck(torch.ops.rankops.cin_layer.default, (xk, x0, w, b))
        torch.library.opcheck(torch.ops.rankops.cin_layer.default, (xk, x0, w, None))
        torch.library.opcheck(torch.ops.rankops.cin_layer_backward.default, (g, xk.detach(), x0.detach(), w.detach()))


def test_compile_fullgraph_cpu():
    """Two stacked layers with a relu under torch.compile(fullgraph=True) on the CPU path (cpp)."""
    B, M, D = 5, 6, 4
    g = torch.Generator().manual_seed(2)
    args = [torch.randn(B, M, D, generator=g), torch.randn(8, M, M, generator=g) / M,
            torch.randn(8, generator=g), torch.randn(3, 4, M, generator=g) / M]

    def net(x0, w1, b1, w2):
        h = torch.relu(cin_layer(x0, x0, w1, b1))
        nxt, direct = h.split(4, 1)
        return torch.cat([direct, cin_layer(nxt, x0, w2)], 1).sum(-1)

    def run(fn):
        leaves = [a.clone().requires_grad_(True) for a in args]
        with on("cpp", "cpu"):
            out = fn(*leaves)
            out.sum().backward()
        return out, [a.grad for a in leaves]

    out_e, grads_e = run(net)
    torch._dynamo.reset()
    out_c, grads_c = run(torch.compile(net, fullgraph=True))
    torch.testing.assert_close(out_c, out_e)
    for a, e in zip(grads_c, grads_e):
        torch.testing.assert_close(a, e)


def test_bad_inputs():
    xk, x0, w, b = _inputs(3, 4, 5, 6, 2, torch.float32, "cpu")
    with pytest.raises(ValueError, match="x0"):
        cin_layer(xk, torch.randn(2, 5, 6), w, b)  # batch mismatch
    with pytest.raises(ValueError, match="x0"):
        cin_layer(xk, torch.randn(3, 5, 7), w, b)  # embedding dim mismatch
    with pytest.raises(ValueError, match="weight"):
        cin_layer(xk, x0, torch.randn(2, 5, 4), b)  # H and M swapped
    with pytest.raises(ValueError, match="weight"):
        cin_layer(xk, x0, torch.randn(2, 20), b)
    with pytest.raises(ValueError, match="bias"):
        cin_layer(xk, x0, w, torch.randn(3))
    with pytest.raises(ValueError, match="xk"):
        cin_layer(xk[0], x0, w, b)
    with pytest.raises(TypeError, match="x0"):
        cin_layer(xk, x0.half(), w, b)
    with pytest.raises(TypeError, match="xk"):
        cin_layer(xk.int(), x0.int(), w.int(), b.int())
    with pytest.raises(ValueError, match="weight"):
        cin_layer(xk, x0, w.to("meta"), b)


@pytest.mark.slow
def test_triton_kernels_compile_for_hopper_without_spills(tmp_path):
    """Ahead-of-time compile of the shipped GPU configurations (bf16) for sm_90a: ptxas must report
    no spills. Covers the CIN forward / weight-gradient kernels and the cross GEMM's three variants.
    Runs in a subprocess: the kernels must be real JIT functions, not the interpreter's."""
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", "import tests.ops.test_cin as t; t._aot_check()"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("no spills") == 5, out.stdout


def _aot_check():
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget

    from rankops.ops.cin.triton import _cin_dw_kernel, _cin_fwd_kernel
    from rankops.ops.cross.triton import _gemm_kernel

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    tmp = tempfile.mkdtemp()

    def check(fn, ptrs, ints, consts, fp32_ptrs=()):
        sig = {n: ("*fp32" if n in fp32_ptrs else "*bf16") for n in ptrs} | {n: "i32" for n in ints}
        sig |= {n: "constexpr" for n in consts}
        k = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=3))
        ptx = os.path.join(tmp, f"{fn.__name__}.ptx")
        with open(ptx, "w") as f:
            f.write(k.asm["ptx"])
        out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
        if "0 bytes spill stores, 0 bytes spill loads" not in out:
            raise AssertionError(f"{fn.__name__} {consts} spills: {out}")
        print(fn.__name__, "no spills")

    strides = lambda p, dims: [f"s_{p}{c}" for c in dims]  # noqa: E731
    check(_cin_fwd_kernel, ["xk_ptr", "x0_ptr", "w_ptr", "bias_ptr", "out_ptr"],
          ["R", "D", "M", "Hn", "K"] + strides("k", "bhd") + strides("0", "bid") + strides("w", "nhi")
          + strides("o", "bnd"),
          dict(HAS_BIAS=True, LOW_PRECISION_DOT=True, BM=128, BN=128, BK=32))
    check(_cin_dw_kernel, ["g_ptr", "xk_ptr", "x0_ptr", "dw_ptr", "db_ptr"],
          ["R", "D", "M", "Hn", "K"] + strides("g", "bnd") + strides("k", "bhd") + strides("0", "bid"),
          dict(LOW_PRECISION_DOT=True, BN=128, BK=64, BR=32), fp32_ptrs=("db_ptr",))
    ptrs = ["a_ptr", "a2_ptr", "b_ptr", "bias_ptr", "mul_ptr", "add_ptr", "c_ptr", "p_ptr", "aux1_ptr", "aux2_ptr",
            "aux_ptr", "rowsum_ptr"]
    ints = ["M", "N", "K", "s_am", "s_ak", "s_bk", "s_bn", "s_cm"]
    base = dict(HAS_A2=False, HAS_BIAS=True, HAS_MUL=True, HAS_ADD=True, STORE_P=True, HAS_AUX=False, ROWSUM=False,
                LOW_PRECISION_DOT=True, BM=128, BN=128, BK=32)
    for extra in ({}, dict(HAS_A2=True, HAS_BIAS=False, HAS_MUL=False, STORE_P=False, HAS_AUX=True),
                  dict(HAS_A2=True, HAS_BIAS=False, HAS_MUL=False, HAS_ADD=False, STORE_P=False, ROWSUM=True)):
        check(_gemm_kernel, ptrs, ints, base | extra, fp32_ptrs=("rowsum_ptr",))
