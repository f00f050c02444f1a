"""cross_layer, cross_layer_lowrank, cross_layer_v1 and the stacked cross_net: every backend against
the reference, forward and every gradient, fp32 / fp16 / bf16, odd widths (N=429, N=1, r=1, one
layer), non-contiguous inputs, opcheck, torch.compile(fullgraph=True), and the errors on bad input."""

from __future__ import annotations

import pytest
import torch

import rankops
from rankops.ops.cross import cross_layer, cross_layer_lowrank, cross_layer_v1, cross_net, row_stride
from tests.utils import DTYPES, assert_close, backend_devices, on, tol

KERNELS = backend_devices("cpp", "triton")
# the full-rank and low-rank layers and stacks also have CUDA kernels; v1 does not
KERNELS_V2 = backend_devices("cpp", "triton", "cuda")
CUDA_OPS = ("v2", "lowrank")
CUDA = [p for p in backend_devices("cuda") if p.values[1] == "cuda"]

# (B, N, r): DCN-V2's usual 429 (13 dense + 26 x 16), size-1 edges, a rank-1 low-rank layer
SHAPES = [(67, 429, 7), (1, 1, 1), (9, 33, 1)]
SHAPE_IDS = ["B67-N429-r7", "B1-N1-r1", "B9-N33-r1"]


def _inputs(op: str, B: int, N: int, r: int, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    x0, xl = rnd(B, N), rnd(B, N)
    if op == "v2":
        return [x0, xl, rnd(N, N, scale=N**-0.5), rnd(N)]
    if op == "lowrank":
        return [x0, xl, rnd(N, r, scale=N**-0.25), rnd(r, N, scale=N**-0.25), rnd(N)]
    return [x0, xl, rnd(N, scale=N**-0.5), rnd(N)]


FNS = {"v2": cross_layer, "lowrank": cross_layer_lowrank, "v1": cross_layer_v1}


def _op_kernels(ops):
    """(op, backend, device) params: every kernel backend of each layer op (cuda but for v1)."""
    return [pytest.param(op, *p.values, id=f"{op}-{p.id}", marks=p.marks)
            for op in ops for p in (KERNELS_V2 if op in CUDA_OPS else KERNELS)]


def _fwd_bwd(fn, args, grad, backend, device):
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    with on(backend, device) if backend != "reference" else rankops.use_backend("reference"):
        out = fn(*leaves)
        out.backward(grad)
    return out, [a.grad for a in leaves]


def _check(out, grads, ref_out, ref_grads, dtype, names):
    # a GEMM's rounding error scales with its output: tolerances relative to the tensor's magnitude
    def close(a, e, name):
        t = tol(dtype)
        scale = max(1.0, e.detach().float().abs().max().item())
        assert_close(a, e, atol=t["atol"] * scale, rtol=t["rtol"], name=name)

    close(out, ref_out, "out")
    for n, a, e in zip(names, grads, ref_grads):
        assert a is not None, f"no gradient for {n}"
        assert a.dtype == e.dtype and a.shape == e.shape, n
        close(a, e, f"grad {n}")


NAMES = {"v2": ["x0", "xl", "weight", "bias"], "lowrank": ["x0", "xl", "u", "v", "bias"], "v1": ["x0", "xl", "w", "bias"]}


@pytest.mark.parametrize("op,backend,device", _op_kernels(["v2", "lowrank", "v1"]))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_reference(op, shape, dtype, backend, device):
    args = _inputs(op, *shape, dtype, device)
    grad = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    ref_out, ref_grads = _fwd_bwd(FNS[op], args, grad, "reference", device)
    out, grads = _fwd_bwd(FNS[op], args, grad, backend, device)
    assert out.dtype == dtype
    _check(out, grads, ref_out, ref_grads, dtype, NAMES[op])


def test_reference_matches_autograd_of_the_formula():
    """The reference's hand-written backwards against autograd of the plain formulas, in fp64."""
    from rankops.ops.cross import reference as R

    B, N, r = 6, 11, 3
    x0, xl = torch.randn(B, N, dtype=torch.float64), torch.randn(B, N, dtype=torch.float64)
    W, b, u, v, w = (torch.randn(*s, dtype=torch.float64) for s in [(N, N), (N,), (N, r), (r, N), (N,)])
    g = torch.randn(B, N, dtype=torch.float64)
    cases = [
        (lambda x0, xl, W, b: x0 * (xl @ W.T + b) + xl, [x0, xl, W, b],
         lambda: R.cross_layer(x0, xl, W, b, True),
         lambda saved: R.cross_layer_backward(g, x0, xl, W, saved[0])),
        (lambda x0, xl, u, v, b: x0 * ((xl @ v.T) @ u.T + b) + xl, [x0, xl, u, v, b],
         lambda: R.cross_layer_lowrank(x0, xl, u, v, b, True),
         lambda saved: R.cross_layer_lowrank_backward(g, x0, xl, u, v, *saved)),
        (lambda x0, xl, w, b: x0 * (xl @ w)[:, None] + b + xl, [x0, xl, w, b],
         lambda: (R.cross_layer_v1(x0, xl, w, b),),
         lambda saved: R.cross_layer_v1_backward(g, x0, xl, w)),
    ]
    for formula, args, fwd, bwd in cases:
        leaves = [a.clone().requires_grad_(True) for a in args]
        expect = formula(*leaves)
        expect.backward(g)
        res = fwd()
        torch.testing.assert_close(res[0].double(), expect.detach(), atol=1e-5, rtol=1e-5)  # fp32 inside
        for a, e in zip(bwd(res[1:]), leaves):
            torch.testing.assert_close(a.double(), e.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op,backend,device", _op_kernels(["v2", "lowrank", "v1"]))
def test_non_contiguous(op, backend, device):
    B, N, r = 13, 40, 4
    args = _inputs(op, B, N, r, torch.float32, device)
    # x0 a column slice of a wider tensor, xl transposed storage, weights transposed views
    x0 = torch.stack([args[0], args[0]], 2)[:, :, 0]
    xl = args[1].T.contiguous().T
    nc = [x0, xl] + [a.T.contiguous().T if a.dim() == 2 else torch.stack([a, a], 1)[:, 0] for a in args[2:]]
    assert not nc[0].is_contiguous() and not nc[2].is_contiguous()
    grad = torch.randn(B, 2 * N, device=device)[:, ::2]
    ref_out, ref_grads = _fwd_bwd(FNS[op], args, grad.contiguous(), "reference", device)
    out, grads = _fwd_bwd(FNS[op], nc, grad, backend, device)
    _check(out, grads, ref_out, ref_grads, torch.float32, NAMES[op])


@pytest.mark.parametrize("backend,device", backend_devices("cpp", "triton", "cuda", "reference"))
def test_inference_does_not_save(backend, device):
    """Without autograd the fused forward writes out only (the saved p comes back empty)."""
    args = _inputs("v2", 5, 8, 2, torch.float32, device)
    with on(backend, device) if backend != "reference" else rankops.use_backend("reference"):
        out, p = torch.ops.rankops.cross_layer(*args, False)
        out2, p2 = torch.ops.rankops.cross_layer(*args, True)
    assert p.numel() == 0 and p2.shape == out.shape
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(p2, args[1] @ args[2].T + args[3])


@pytest.mark.parametrize("backend,device", backend_devices("cpp", "triton", "reference"))
def test_opcheck(backend, device):
    B, N, r = 5, 12, 3
    v2 = [a.requires_grad_(True) for a in _inputs("v2", B, N, r, torch.float32, device)]
    lr = [a.requires_grad_(True) for a in _inputs("lowrank", B, N, r, torch.float32, device)]
    v1 = [a.requires_grad_(True) for a in _inputs("v1", B, N, r, torch.float32, device)]
    g = torch.randn(B, N, device=device)
    ctx = on(backend, device) if backend != "reference" else rankops.use_backend("reference")
    with ctx:
        for save in (True, False):
            torch.library.opcheck(torch.ops.rankops.cross_layer.default, (*v2, save))
            torch.library.opcheck(torch.ops.rankops.cross_layer_lowrank.default, (*lr, save))
        torch.library.opcheck(torch.ops.rankops.cross_layer_v1.default, tuple(v1))
        p = v2[1] @ v2[2].T + v2[3]
        torch.library.opcheck(torch.ops.rankops.cross_layer_backward.default,
                              (g, *[a.detach() for a in v2[:3]], p.detach()))
        t = (lr[1] @ lr[3].T).detach()
        p = (t @ lr[2].T + lr[4]).detach()
        torch.library.opcheck(torch.ops.rankops.cross_layer_lowrank_backward.default,
                              (g, *[a.detach() for a in lr[:4]], t, p))
        torch.library.opcheck(torch.ops.rankops.cross_layer_v1_backward.default,
                              (g, *[a.detach() for a in v1[:3]]))


def test_compile_fullgraph_cpu():
    """A 3-layer stack of each kind under torch.compile(fullgraph=True) on the CPU path (cpp)."""
    B, N, r = 7, 21, 3

    def stack(x0, W, b, u, v, w):
        x = x0
        x = cross_layer(x0, x, W, b)
        x = cross_layer_lowrank(x0, x, u, v, b)
        x = cross_layer_v1(x0, x, w, b)
        return x

    g = torch.Generator().manual_seed(3)
    args = [torch.randn(*s, generator=g) for s in [(B, N), (N, N), (N,), (N, r), (r, N), (N,)]]
    args[1] = args[1] / N**0.5
    compiled = torch.compile(stack, fullgraph=True, backend="aot_eager")
    out_e, grads_e = _fwd_bwd(stack, args, torch.ones(B, N), "cpp", "cpu")
    torch._dynamo.reset()
    out_c, grads_c = _fwd_bwd(compiled, args, torch.ones(B, N), "cpp", "cpu")
    torch.testing.assert_close(out_c, out_e)
    for a, e in zip(grads_c, grads_e):
        torch.testing.assert_close(a, e)
    # and inductor, inference: the custom ops stay opaque calls inside the compiled graph
    with on("cpp", "cpu"), torch.no_grad():
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(stack, fullgraph=True)(*args), out_e.detach())


# ---------------------------------------------------------------------------------------------
# bad input: a clear exception naming the argument


def test_bad_inputs():
    B, N = 4, 6
    x0, xl = torch.randn(B, N), torch.randn(B, N)
    W, b = torch.randn(N, N), torch.randn(N)
    with pytest.raises(ValueError, match="xl"):
        cross_layer(x0, torch.randn(B, N + 1), W, b)
    with pytest.raises(ValueError, match="weight"):
        cross_layer(x0, xl, torch.randn(N + 1, N + 1), b)
    with pytest.raises(ValueError, match="bias"):
        cross_layer(x0, xl, W, torch.randn(N + 2))
    with pytest.raises(ValueError, match="x0"):
        cross_layer(torch.randn(B, N, 1), xl, W, b)
    with pytest.raises(TypeError, match="weight"):
        cross_layer(x0, xl, W.double(), b)
    with pytest.raises(TypeError, match="x0"):
        cross_layer(x0.long(), xl.long(), W.long(), b.long())
    with pytest.raises(ValueError, match="weight"):
        cross_layer(x0, xl, W.to("meta"), b)
    with pytest.raises(TypeError, match="xl"):
        cross_layer(x0, xl.numpy(), W, b)
    # low rank: rank 0 and mismatched factors
    with pytest.raises(ValueError, match="rank"):
        cross_layer_lowrank(x0, xl, torch.randn(N, 0), torch.randn(0, N), b)
    with pytest.raises(ValueError, match="v"):
        cross_layer_lowrank(x0, xl, torch.randn(N, 2), torch.randn(3, N), b)
    with pytest.raises(ValueError, match="u"):
        cross_layer_lowrank(x0, xl, torch.randn(N + 1, 2), torch.randn(2, N), b)
    with pytest.raises(TypeError, match="u"):
        cross_layer_lowrank(x0, xl, torch.randn(N, 2, dtype=torch.float16), torch.randn(2, N), b)
    # v1
    with pytest.raises(ValueError, match="w"):
        cross_layer_v1(x0, xl, torch.randn(N, 1), b)
    with pytest.raises(ValueError, match="bias"):
        cross_layer_v1(x0, xl, torch.randn(N), torch.randn(1))


# ---------------------------------------------------------------------------------------------
# cross_net: L stacked full-rank layers in one op

# (B, N, L): 429 with 3 layers (padded rows), size-1 edges, N a multiple of 16 (unpadded: layer 0 GEMMs into dx0)
NET_SHAPES = [(67, 429, 3), (1, 1, 1), (9, 33, 2), (5, 32, 3)]
NET_IDS = ["B67-N429-L3", "B1-N1-L1", "B9-N33-L2", "B5-N32-L3"]


def _net_inputs(B, N, L, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)  # noqa: E731
    return [rnd(B, N), rnd(L, N, N, scale=N**-0.5), rnd(L, N)]


@pytest.mark.parametrize("backend,device", KERNELS_V2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NET_SHAPES, ids=NET_IDS)
def test_net_matches_reference(shape, dtype, backend, device):
    args = _net_inputs(*shape, dtype, device)
    grad = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    ref_out, ref_grads = _fwd_bwd(cross_net, args, grad, "reference", device)
    out, grads = _fwd_bwd(cross_net, args, grad, backend, device)
    assert out.dtype == dtype
    _check(out, grads, ref_out, ref_grads, dtype, ["x0", "weight", "bias"])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_net_is_the_stack_of_layers(backend):
    """cross_net against fp64 autograd of the plain per-layer formula."""
    B, N, L = 6, 11, 3
    x0, W, b = _net_inputs(B, N, L, torch.float32, "cpu")
    g = torch.randn(B, N)
    leaves = [a.double().requires_grad_(True) for a in (x0, W, b)]
    x = leaves[0]
    for l in range(L):
        x = leaves[0] * (x @ leaves[1][l].T + leaves[2][l]) + x
    x.backward(g.double())
    out, grads = _fwd_bwd(cross_net, [x0, W, b], g, backend, "cpu")
    torch.testing.assert_close(out.double(), x.detach(), atol=1e-5, rtol=1e-5)
    for a, e in zip(grads, leaves):
        torch.testing.assert_close(a.double(), e.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", KERNELS_V2)
def test_net_non_contiguous(backend, device):
    B, N, L = 13, 40, 2
    args = _net_inputs(B, N, L, torch.float32, device)
    nc = [torch.stack([args[0], args[0]], 2)[:, :, 0], args[1].transpose(1, 2).contiguous().transpose(1, 2),
          torch.stack([args[2], args[2]], 2)[:, :, 0]]
    assert not any(t.is_contiguous() for t in nc)
    grad = torch.randn(B, 2 * N, device=device)[:, ::2]
    ref_out, ref_grads = _fwd_bwd(cross_net, args, grad.contiguous(), "reference", device)
    out, grads = _fwd_bwd(cross_net, nc, grad, backend, device)
    _check(out, grads, ref_out, ref_grads, torch.float32, ["x0", "weight", "bias"])


@pytest.mark.parametrize("backend,device", backend_devices("cpp", "triton", "cuda", "reference"))
def test_net_saved_layout(backend, device):
    """save=False keeps nothing; save=True keeps the layers' inputs and p in rows of row_stride(N),
    pads zero; the output does not depend on save."""
    B, N, L = 5, 21, 3
    x0, W, b = _net_inputs(B, N, L, torch.float32, device)
    with on(backend, device) if backend != "reference" else rankops.use_backend("reference"):
        out, xs, ps = torch.ops.rankops.cross_net(x0, W, b, False)
        out2, xs2, ps2 = torch.ops.rankops.cross_net(x0, W, b, True)
    assert xs.numel() == 0 and ps.numel() == 0
    assert xs2.shape == (L - 1, B, row_stride(N)) and ps2.shape == (L, B, row_stride(N))
    torch.testing.assert_close(out, out2)
    x = x0
    for l in range(L):
        p = x @ W[l].T + b[l]
        torch.testing.assert_close(ps2[l, :, :N], p)
        if l:
            torch.testing.assert_close(xs2[l - 1, :, :N], x)
        x = x0 * p + x
    assert not ps2[:, :, N:].any() and not xs2[:, :, N:].any()


@pytest.mark.parametrize("backend,device", backend_devices("cpp", "triton", "cuda", "reference"))
def test_net_opcheck(backend, device):
    B, N, L = 5, 12, 2
    args = [a.requires_grad_(True) for a in _net_inputs(B, N, L, torch.float32, device)]
    g = torch.randn(B, N, device=device)
    with on(backend, device) if backend != "reference" else rankops.use_backend("reference"):
        for save in (True, False):
            torch.library.opcheck(torch.ops.rankops.cross_net.default, (*args, save))
        _, xs, ps = torch.ops.rankops.cross_net(*[a.detach() for a in args], True)
        torch.library.opcheck(torch.ops.rankops.cross_net_backward.default, (g, args[0].detach(), args[1].detach(), xs, ps))


def test_net_compile_fullgraph_cpu():
    """nn.CrossNet (v2: one cross_net call) under torch.compile(fullgraph=True) on the cpp path."""
    from rankops.nn import CrossNet

    net = CrossNet(21, 3)
    with torch.no_grad():
        net.bias.normal_()
    x = torch.randn(7, 21)
    out_e, grads_e = _fwd_bwd(net, [x], torch.ones(7, 21), "cpp", "cpu")
    torch._dynamo.reset()
    out_c, grads_c = _fwd_bwd(torch.compile(net, fullgraph=True, backend="aot_eager"), [x], torch.ones(7, 21), "cpp", "cpu")
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(grads_c[0], grads_e[0])
    with on("cpp", "cpu"), torch.no_grad():
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(net, fullgraph=True)(x), out_e.detach())


def test_net_bad_inputs():
    B, N, L = 4, 6, 2
    x0, W, b = torch.randn(B, N), torch.randn(L, N, N), torch.randn(L, N)
    with pytest.raises(ValueError, match="weight"):
        cross_net(x0, torch.randn(N, N), b)  # one layer's weight, not a stack
    with pytest.raises(ValueError, match="weight"):
        cross_net(x0, torch.randn(0, N, N), torch.randn(0, N))  # no layer
    with pytest.raises(ValueError, match="weight"):
        cross_net(x0, torch.randn(L, N + 1, N + 1), b)  # N of weight != N of x0
    with pytest.raises(ValueError, match="bias"):
        cross_net(x0, W, torch.randn(L + 1, N))
    with pytest.raises(ValueError, match="x0"):
        cross_net(torch.randn(B, N, 1), W, b)
    with pytest.raises(TypeError, match="bias"):
        cross_net(x0, W, b.half())
    with pytest.raises(TypeError, match="x0"):
        cross_net(x0.long(), W.long(), b.long())
    with pytest.raises(ValueError, match="weight"):
        cross_net(x0, W.to("meta"), b)
    with pytest.raises(TypeError, match="weight"):
        cross_net(x0, W.numpy(), b)


# ---------------------------------------------------------------------------------------------
# cross_net_v1 / cross_net_lowrank: v1 and low-rank stacks as one op, against the per-layer ops

from rankops.ops.cross import cross_net_lowrank, cross_net_v1  # noqa: E402

STACK_SHAPES = [(67, 429, 7, 3), (1, 1, 1, 1), (9, 33, 1, 2), (5, 32, 3, 4)]
STACK_IDS = ["B67-N429-r7-L3", "B1-N1-r1-L1", "B9-N33-r1-L2", "B5-N32-r3-L4"]


def _stack_inputs(variant, B, N, r, L, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    if variant == "v1":
        return [rnd(B, N), rnd(L, N, scale=N**-0.5), rnd(L, N, scale=0.1)]
    return [rnd(B, N), rnd(L, N, r, scale=N**-0.25), rnd(L, r, N, scale=N**-0.25), rnd(L, N, scale=0.1)]


def _per_layer(variant):
    """The stack as L calls of the layer op (what CrossNet ran before the stacked ops)."""
    if variant == "v1":
        def run(x0, w, b):
            x = x0
            for l in range(w.shape[0]):
                x = cross_layer_v1(x0, x, w[l], b[l])
            return x
    else:
        def run(x0, u, v, b):
            x = x0
            for l in range(u.shape[0]):
                x = cross_layer_lowrank(x0, x, u[l], v[l], b[l])
            return x
    return run


STACKS = {"v1": (cross_net_v1, ["x0", "w", "bias"]), "lowrank": (cross_net_lowrank, ["x0", "u", "v", "bias"])}


def _stack_kernels(variants, *extra):
    """(variant, backend, device) params: cuda for the low-rank stack, not for v1."""
    return [pytest.param(v, *p.values, id=f"{v}-{p.id}", marks=p.marks) for v in variants
            for p in backend_devices("cpp", "triton", *(["cuda"] if v == "lowrank" else []), *extra)]


@pytest.mark.parametrize("variant,backend,device", _stack_kernels(["v1", "lowrank"], "reference"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", STACK_SHAPES, ids=STACK_IDS)
def test_stack_matches_per_layer_reference(variant, shape, dtype, backend, device):
    args = _stack_inputs(variant, *shape, dtype, device)
    grad = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    # the per-layer reference in fp32 (rounding every layer's output to bf16 would be the larger error)
    ref_out, ref_grads = _fwd_bwd(_per_layer(variant), [a.float() for a in args], grad.float(), "reference", device)
    fn, names = STACKS[variant]
    out, grads = _fwd_bwd(fn, args, grad, backend, device)
    assert out.dtype == dtype
    _check(out, grads, ref_out.to(dtype), [g.to(dtype) for g in ref_grads], dtype, names)


@pytest.mark.parametrize("variant,backend,device", _stack_kernels(["v1", "lowrank"]))
def test_stack_non_contiguous(variant, backend, device):
    args = _stack_inputs(variant, 13, 40, 5, 2, torch.float32, device)
    nc = [torch.stack([a, a], -1)[..., 0] for a in args]
    assert not any(t.is_contiguous() for t in nc)
    grad = torch.randn(13, 40, device=device)
    ref_out, ref_grads = _fwd_bwd(_per_layer(variant), args, grad, "reference", device)
    out, grads = _fwd_bwd(STACKS[variant][0], nc, grad, backend, device)
    _check(out, grads, ref_out, ref_grads, torch.float32, STACKS[variant][1])


@pytest.mark.parametrize("backend,device", backend_devices("cpp", "triton", "reference"))
def test_stack_opcheck(backend, device):
    B, N, r, L = 5, 12, 3, 2
    v1 = [a.requires_grad_(True) for a in _stack_inputs("v1", B, N, r, L, torch.float32, device)]
    lr = [a.requires_grad_(True) for a in _stack_inputs("lowrank", B, N, r, L, torch.float32, device)]
    g = torch.randn(B, N, device=device)
    with on(backend, device) if backend != "reference" else rankops.use_backend("reference"):
        torch.library.opcheck(torch.ops.rankops.cross_net_v1.default, tuple(v1))
        torch.library.opcheck(torch.ops.rankops.cross_net_v1_backward.default, (g, *[a.detach() for a in v1]))
        for save in (True, False):
            torch.library.opcheck(torch.ops.rankops.cross_net_lowrank.default, (*lr, save))
        d = [a.detach() for a in lr]
        out, xs, ts, ps = torch.ops.rankops.cross_net_lowrank(*d, True)
        assert xs.shape == (L - 1, B, N) and ts.shape == (L, B, r) and ps.shape == (L, B, N)
        out2, *empty = torch.ops.rankops.cross_net_lowrank(*d, False)
        assert all(t.numel() == 0 for t in empty)
        torch.testing.assert_close(out, out2)
        torch.library.opcheck(torch.ops.rankops.cross_net_lowrank_backward.default, (g, d[0], d[1], d[2], xs, ts, ps))


@pytest.mark.parametrize("variant", ["v1", "lowrank"])
def test_crossnet_runs_one_stack_op_and_compiles(variant):
    """CrossNet(v1 / lowrank) is one stacked op call, also under torch.compile(fullgraph=True)."""
    from torch.profiler import ProfilerActivity, profile

    from rankops.nn import CrossNet

    net = CrossNet(21, 3, variant=variant, low_rank=4)
    with torch.no_grad():
        net.bias.normal_()
    x = torch.randn(7, 21, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        net(x).sum().backward()
    names = [e.name for e in prof.events()]  # the cpp kernels (auto on CPU): one stack each way, no layer op
    assert names.count(f"rankops_C::cross_net_{variant}") == 1
    assert names.count(f"rankops_C::cross_net_{variant}_backward") == 1
    assert not any(n.startswith("rankops_C::cross_layer") for n in names)
    out_e, grads_e = _fwd_bwd(net, [x], torch.ones(7, 21), "cpp", "cpu")
    ref_e, ref_grads = _fwd_bwd(net, [x], torch.ones(7, 21), "reference", "cpu")
    torch.testing.assert_close(out_e, ref_e, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
    out_c, grads_c = _fwd_bwd(torch.compile(net, fullgraph=True, backend="aot_eager"), [x], torch.ones(7, 21), "cpp",
                              "cpu")
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(grads_c[0], grads_e[0])


def test_stack_bad_inputs():
    B, N, L, r = 4, 6, 2, 3
    x0 = torch.randn(B, N)
    with pytest.raises(ValueError, match="w"):
        cross_net_v1(x0, torch.randn(N), torch.randn(N))  # one layer's vector, not a stack
    with pytest.raises(ValueError, match="at least one layer"):
        cross_net_v1(x0, torch.randn(0, N), torch.randn(0, N))
    with pytest.raises(ValueError, match="bias"):
        cross_net_v1(x0, torch.randn(L, N), torch.randn(L + 1, N))
    with pytest.raises(TypeError, match="bias"):
        cross_net_v1(x0, torch.randn(L, N), torch.randn(L, N).half())
    with pytest.raises(ValueError, match="v"):
        cross_net_lowrank(x0, torch.randn(L, N, r), torch.randn(L, r + 1, N), torch.randn(L, N))
    with pytest.raises(ValueError, match="rank"):
        cross_net_lowrank(x0, torch.randn(L, N, 0), torch.randn(L, 0, N), torch.randn(L, N))
    with pytest.raises(ValueError, match="x0"):
        cross_net_lowrank(torch.randn(B, N, 1), torch.randn(L, N, r), torch.randn(L, r, N), torch.randn(L, N))
    with pytest.raises(TypeError, match="u"):
        cross_net_lowrank(x0, torch.randn(L, N, r).numpy(), torch.randn(L, r, N), torch.randn(L, N))


# ---------------------------------------------------------------------------------------------
# CUDA kernels (cross_layer, cross_net): the paths csrc/cuda/cross.cu and the cuBLASLt calls in
# csrc/cross.cpp branch on. 16-byte vectors need N a multiple of 8 (fp16/bf16) or 4 (fp32) and every
# row stride too, else scalars; the bias goes into the GEMM's epilogue only for N > 1; batches past
# 256 row blocks (8 to 32 rows each) walk the grid-stride loops and fill every db partial row.

# (B, N): scalar odd N (37, 429), vector N (64; 48: fp32-only vectors at 4, fp16 at 8 too), N=1
# (bias in our pass), B=1, and batches long enough for the grid-stride loops
GPU_SHAPES = [(1, 429), (3, 37), (300, 37), (129, 64), (5, 48), (7, 1), (20000, 37), (40000, 64), (1, 8)]


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
@pytest.mark.parametrize("op,r", [("v2", 1), ("lowrank", 1), ("lowrank", 5)], ids=["v2", "lowrank-r1", "lowrank-r5"])
def test_cuda_layer_paths(op, r, shape, dtype, backend, device):
    B, N = shape
    args = _inputs(op, B, N, r, dtype, device)
    grad = torch.randn(B, N, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    ref_out, ref_grads = _fwd_bwd(FNS[op], args, grad, "reference", device)
    out, grads = _fwd_bwd(FNS[op], args, grad, backend, device)
    _check(out, grads, ref_out, ref_grads, dtype, NAMES[op])
    # inference (save=False) writes the same out and saves nothing; save=True keeps p (and t)
    raw = torch.ops.rankops.cross_layer if op == "v2" else torch.ops.rankops.cross_layer_lowrank
    with on(backend, device):
        o1, *s1 = raw(*args, False)
        o2, *s2 = raw(*args, True)
    with rankops.use_backend("reference"):
        _, *s_ref = raw(*args, True)
    assert all(t.numel() == 0 for t in s1) and s2[-1].shape == (B, N)
    torch.testing.assert_close(o1, o2, atol=0, rtol=0)
    for a, e in zip(s2, s_ref):
        _check(a, [], e, [], dtype, [])


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 429, 3), (300, 37, 3), (129, 64, 3), (7, 1, 2), (20000, 37, 2), (40000, 64, 3),
                                   (33, 48, 1)], ids=str)
def test_cuda_net_paths(shape, dtype, backend, device):
    """cross_net (cuda) against the per-layer reference (three cross_layer calls, fp32), forward and
    every gradient, and its inference path (two buffers taking turns) against its training one."""
    B, N, L = shape
    args = _net_inputs(B, N, L, dtype, device)
    grad = torch.randn(B, N, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)

    def per_layer(x0, W, b):
        x = x0
        for l in range(W.shape[0]):
            x = cross_layer(x0, x, W[l], b[l])
        return x

    ref_out, ref_grads = _fwd_bwd(per_layer, [a.float() for a in args], grad.float(), "reference", device)
    out, grads = _fwd_bwd(cross_net, args, grad, backend, device)
    assert out.dtype == dtype
    _check(out, grads, ref_out.to(dtype), [g.to(dtype) for g in ref_grads], dtype, ["x0", "weight", "bias"])
    with on(backend, device):
        o1, xs1, ps1 = torch.ops.rankops.cross_net(*args, False)
        o2, xs2, ps2 = torch.ops.rankops.cross_net(*args, True)
    assert xs1.numel() == 0 and ps1.numel() == 0
    assert xs2.shape == (L - 1, B, row_stride(N)) and ps2.shape == (L, B, row_stride(N))
    torch.testing.assert_close(o1, o2, atol=0, rtol=0)
    assert not ps2[:, :, N:].any() and not xs2[:, :, N:].any()


@pytest.mark.parametrize("backend,device", CUDA)
def test_cuda_fp32_is_not_tf32(backend, device):
    """fp32 stays IEEE (cuBLASLt with CUBLAS_COMPUTE_32F) even with torch's TF32 switch on: within 1e-5
    of the reference run after the switch is put back (TF32 would be ~1e-3 off at N = 429)."""
    B, N, L = 257, 429, 3
    x0, W, b = _net_inputs(B, N, L, torch.float32, device)
    grad = torch.randn(B, N, device=device)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out, grads = _fwd_bwd(cross_net, [x0, W, b], grad, backend, device)
        lout, lgrads = _fwd_bwd(cross_layer, [x0, x0, W[0], b[0]], grad, backend, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    ref_out, ref_grads = _fwd_bwd(cross_net, [a.double() for a in (x0, W, b)], grad.double(), "reference", device)
    _check(out, grads, ref_out.float(), [g.float() for g in ref_grads], torch.float32, ["x0", "weight", "bias"])
    lref, lref_grads = _fwd_bwd(cross_layer, [a.double() for a in (x0, x0, W[0], b[0])], grad.double(), "reference",
                                device)
    _check(lout, lgrads, lref.float(), [g.float() for g in lref_grads], torch.float32, NAMES["v2"])


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_net_matches_cuda_layers(dtype, backend, device):
    """A 3-layer cross_net and three cross_layer calls on the CUDA kernels agree (N = 429, DCN-V2 on
    Criteo), forward and backward."""
    B, N, L = 513, 429, 3
    args = _net_inputs(B, N, L, dtype, device)
    grad = torch.randn(B, N, device=device, dtype=dtype)

    def per_layer(x0, W, b):
        x = x0
        for l in range(W.shape[0]):
            x = cross_layer(x0, x, W[l], b[l])
        return x

    out_l, grads_l = _fwd_bwd(per_layer, args, grad, backend, device)
    out_n, grads_n = _fwd_bwd(cross_net, args, grad, backend, device)
    _check(out_n, grads_n, out_l, grads_l, dtype, ["x0", "weight", "bias"])


@pytest.mark.parametrize("backend,device", CUDA)
def test_cuda_empty_batch(backend, device):
    """B = 0: empty outputs, zero weight and bias gradients."""
    N, L = 37, 2
    for fn, args in [(cross_layer, _inputs("v2", 0, N, 1, torch.float32, device)),
                     (cross_net, _net_inputs(0, N, L, torch.float32, device)),
                     (cross_layer_lowrank, _inputs("lowrank", 0, N, 3, torch.float32, device)),
                     (cross_net_lowrank, _stack_inputs("lowrank", 0, N, 3, L, torch.float32, device))]:
        out, grads = _fwd_bwd(fn, args, torch.zeros(0, N, device=device), backend, device)
        assert out.shape == (0, N)
        for a, gr in zip(args, grads):
            assert gr.shape == a.shape
            assert not gr.any()


@pytest.mark.parametrize("backend,device", CUDA)
def test_cuda_layer_opcheck(backend, device):
    B, N = 5, 12
    v2 = [a.requires_grad_(True) for a in _inputs("v2", B, N, 1, torch.float32, device)]
    g = torch.randn(B, N, device=device)
    with on(backend, device):
        for save in (True, False):
            torch.library.opcheck(torch.ops.rankops.cross_layer.default, (*v2, save))
        p = (v2[1] @ v2[2].T + v2[3]).detach()
        torch.library.opcheck(torch.ops.rankops.cross_layer_backward.default,
                              (g, *[a.detach() for a in v2[:3]], p))


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 429, 7, 3), (300, 37, 1, 3), (129, 64, 4, 2), (7, 1, 1, 2), (20000, 37, 3, 2),
                                   (33, 48, 16, 1)], ids=str)
def test_cuda_net_lowrank_paths(shape, dtype, backend, device):
    """cross_net_lowrank (cuda) against the per-layer reference in fp32, and its inference path
    (two buffers taking turns) against its training one."""
    B, N, r, L = shape
    args = _stack_inputs("lowrank", B, N, r, L, dtype, device)
    grad = torch.randn(B, N, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    ref_out, ref_grads = _fwd_bwd(_per_layer("lowrank"), [a.float() for a in args], grad.float(), "reference", device)
    out, grads = _fwd_bwd(cross_net_lowrank, args, grad, backend, device)
    _check(out, grads, ref_out.to(dtype), [g.to(dtype) for g in ref_grads], dtype, ["x0", "u", "v", "bias"])
    with on(backend, device):
        o1, *s1 = torch.ops.rankops.cross_net_lowrank(*args, False)
        o2, xs, ts, ps = torch.ops.rankops.cross_net_lowrank(*args, True)
    assert all(t.numel() == 0 for t in s1)
    assert xs.shape == (L - 1, B, N) and ts.shape == (L, B, r) and ps.shape == (L, B, N)
    torch.testing.assert_close(o1, o2, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", CUDA)
def test_cuda_lowrank_opcheck(backend, device):
    B, N, r, L = 5, 12, 3, 2
    lr = [a.requires_grad_(True) for a in _inputs("lowrank", B, N, r, torch.float32, device)]
    st = [a.requires_grad_(True) for a in _stack_inputs("lowrank", B, N, r, L, torch.float32, device)]
    g = torch.randn(B, N, device=device)
    with on(backend, device):
        for save in (True, False):
            torch.library.opcheck(torch.ops.rankops.cross_layer_lowrank.default, (*lr, save))
            torch.library.opcheck(torch.ops.rankops.cross_net_lowrank.default, (*st, save))
        t = (lr[1] @ lr[3].T).detach()
        p = (t @ lr[2].T + lr[4]).detach()
        torch.library.opcheck(torch.ops.rankops.cross_layer_lowrank_backward.default,
                              (g, *[a.detach() for a in lr[:4]], t, p))
        d = [a.detach() for a in st]
        _, xs, ts, ps = torch.ops.rankops.cross_net_lowrank(*d, True)
        torch.library.opcheck(torch.ops.rankops.cross_net_lowrank_backward.default, (g, d[0], d[1], d[2], xs, ts, ps))


def test_triton_gemm_refuses_strided_epilogue_tensors():
    """The Triton GEMM's epilogue addresses c and mul / add / p / aux as contiguous rows of c's shape:
    anything else is refused before a launch, never read at the wrong addresses."""
    triton_gemm = pytest.importorskip("rankops.ops.cross.triton")._gemm
    a, b, c = torch.randn(4, 3), torch.randn(3, 5), torch.empty(4, 5)
    for kw in (dict(mul=torch.randn(5, 4).t()), dict(add=torch.randn(4, 6)), dict(p=torch.randn(4, 10)[:, ::2]),
               dict(aux=(torch.randn(4, 5), torch.randn(4, 5), torch.randn(5, 4).t()))):
        with pytest.raises(ValueError, match="contiguous"):
            triton_gemm(a, (3, 1), b, (5, 1), c, 4, 5, 3, **kw)
    with pytest.raises(ValueError, match="contiguous"):
        triton_gemm(a, (3, 1), b, (5, 1), torch.empty(5, 4).t(), 4, 5, 3)
