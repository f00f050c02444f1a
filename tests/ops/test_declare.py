"""rankops.ops._declare: one declaration gives the forward and backward custom ops, their fakes,
the autograd formula (bound by parameter name) and the direct eager path."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import rankops  # noqa: F401  (the families register their ops)
from rankops.ops import _declare, activation, attention, cin, cross, embedding_bag, interaction

FAMILIES = (activation, attention, cin, cross, embedding_bag, interaction)


def _declared():
    return [v for m in FAMILIES for v in vars(m).values() if isinstance(v, _declare.Op)]


def test_every_family_declares_its_ops_once():
    names = sorted(op.name for op in _declared())
    assert len(names) == len(set(names)) >= 11
    for op in _declared():
        fwd = getattr(torch.ops.rankops, op.name).default._schema
        bwd = getattr(torch.ops.rankops, op.name + "_backward").default._schema
        assert [a.name for a in fwd.arguments] == list(op.inputs)
        assert bwd.arguments[0].name == "grad"


def test_fake_must_take_the_ops_arguments():
    def sig(x: Tensor, scale: float) -> Tensor: ...

    def bwd(grad: Tensor, x: Tensor, scale: float) -> Tensor: ...

    with pytest.raises(TypeError, match="the fake takes"):
        _declare.Op("declare_selftest_bad", sig, kernel=lambda x, scale: x * scale, fake=lambda x: x,
                    backward=bwd, backward_kernel=lambda g, x, s: g * s, backward_fake=lambda grad, x, scale: x,
                    grads=("x",))


def _scale_sig(x: Tensor, scale: float) -> tuple[Tensor, Tensor]: ...


def _scale_bwd(grad: Tensor, x: Tensor, aux: Tensor, scale: float) -> Tensor: ...


# out = x * scale, with a by-product (aux = x + 1) the backward reads by name
_SCALE = _declare.Op(
    "declare_selftest_scale", _scale_sig, outputs=("out", "aux"), grads=("x",),
    kernel=lambda x, scale: (x * scale, x + 1), fake=lambda x, scale: (torch.empty_like(x), torch.empty_like(x)),
    backward=_scale_bwd, backward_kernel=lambda grad, x, aux, scale: grad * scale + 0 * aux,
    backward_fake=lambda grad, x, aux, scale: torch.empty_like(x))


def test_a_declared_op_passes_opcheck_compile_and_grad():
    x = torch.randn(3, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.rankops.declare_selftest_scale.default, (x, 2.5))
    out, aux = _SCALE(x, 2.5)
    assert not aux.requires_grad
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, 2.5))
    compiled = torch.compile(lambda t: _SCALE(t, 3.0)[0].sum(), fullgraph=True)
    (g,) = torch.autograd.grad(compiled(x), x)
    torch.testing.assert_close(g, torch.full_like(x, 3.0))


def test_tracing_reference_traces_the_reference_through_compile():
    """Under tracing_reference() torch.compile sees the ops' PyTorch code, not opaque custom ops
    (bench/models.py's compile baseline); the values are the reference's."""
    from rankops.ops import _declare

    graphs = []

    def record(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm

    x = torch.randn(6, 5, 4)
    torch._dynamo.reset()
    plain = torch.compile(rankops.fm_interaction, backend=record, fullgraph=True)(x)
    assert any("rankops.fm_interaction" in t for t in graphs[-1])
    torch._dynamo.reset()
    with _declare.tracing_reference():
        traced = torch.compile(rankops.fm_interaction, backend=record, fullgraph=True)(x)
    assert not any("rankops" in t for t in graphs[-1]) and graphs[-1]
    torch.testing.assert_close(traced, plain)
    assert not _declare.TRACING_REFERENCE


def test_backends_lists_cuda_for_the_named_ops_and_their_backwards():
    impls = _declare.backends("pkg", cuda=("cross_net",))
    assert "cuda" in impls("cross_net") and "cuda" in impls("cross_net_backward")
    assert "cuda" not in impls("cross_net_lowrank") and "cuda" not in impls("cross_layer")
    assert "cuda" in _declare.backends("pkg", cuda=True)("anything")
    assert "cuda" not in _declare.backends("pkg")("anything")


def test_every_op_listing_cuda_has_a_cuda_kernel_in_the_extension():
    """A family that lists the cuda backend for an op must have registered its CUDA kernel (checked
    from the dispatcher, so it holds on a machine without a GPU)."""
    from rankops import backend

    ext = backend.extension()
    if ext is None or not ext.with_cuda:
        pytest.skip("rankops._C was built without CUDA kernels: nothing to check")
    for op in _declared():
        for name in (op.name, op.name + "_backward"):
            if op.impls is not None and "cuda" in op.impls(name):
                assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rankops_C::{name}", "CUDA"), name
