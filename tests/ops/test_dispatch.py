"""Plain eager work skips torch.library's custom-op dispatch (rankops.ops._dispatch): inference
calls the kernel, training the same formula as a plain autograd.Function; same values and
gradients, no `rankops::<op>` event. Whatever a dispatch mode, a transform or a subclass must see
still takes the custom op."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import rankops
from rankops.ops import _dispatch

g = torch.Generator().manual_seed(0)
_x = torch.randn(8, 5, 4, generator=g)
_x0 = torch.randn(8, 6, generator=g)
_q, _kv = torch.randn(2, 2, 1, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
# op name -> (call, tensors that may require grad)
CASES = {
    "fm_interaction": (lambda x: rankops.fm_interaction(x), (_x,)),
    "dot_interaction": (lambda x: rankops.dot_interaction(x), (_x,)),
    "cross_layer": (lambda x0, w, b: rankops.cross_layer(x0, x0, w, b),
                    (_x0, torch.randn(6, 6, generator=g), torch.randn(6, generator=g))),
    "cross_net": (lambda x0, w, b: rankops.cross_net(x0, w, b),
                  (_x0, torch.randn(2, 6, 6, generator=g), torch.randn(2, 6, generator=g))),
    "cin_layer": (lambda x, w: rankops.cin_layer(x, x, w), (_x, torch.randn(3, 5, 5, generator=g))),
    "target_attention": (lambda q, k: rankops.target_attention(q, k, k, torch.tensor([7, 3])), (_q, _kv)),
    "batched_embedding_bag": (lambda w: rankops.batched_embedding_bag(w, torch.tensor([0, 4, 10]),
                                                                      torch.tensor([1, 3, 3, 9 - 4, 0]),
                                                                      torch.tensor([0, 2, 2, 3, 5])),
                              (torch.randn(10, 8, generator=g),)),
}


def _traced(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, {e.name for e in prof.events()}


@pytest.mark.parametrize("op", list(CASES))
def test_inference_skips_custom_op(op):
    call, tensors = CASES[op]
    with torch.no_grad():
        fast, names = _traced(lambda: call(*tensors))
    assert f"rankops::{op}" not in names
    _, names = _traced(lambda: call(*tensors))  # grad mode on, but nothing requires grad
    assert f"rankops::{op}" not in names
    leaves = [t.clone().requires_grad_() for t in tensors]
    out, names = _traced(lambda: call(*leaves))  # training: the formula as a plain autograd.Function
    assert f"rankops::{op}" not in names and f"{op}_eager" in names and out.requires_grad
    torch.testing.assert_close(out.detach(), fast)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    _, names = _traced(lambda: out.backward(upstream))  # the backward op takes the direct path too
    assert f"rankops::{op}_backward" not in names and all(t.grad is not None for t in leaves)
    # ...with the custom op's values and gradients (a dispatch mode makes the call take the custom op)
    ref_leaves = [t.clone().requires_grad_() for t in tensors]
    with _Watching():
        ref = call(*ref_leaves)
        ref.backward(upstream)
    torch.testing.assert_close(out.detach(), ref.detach())
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad)


class _Watching(TorchDispatchMode):
    """A dispatch mode that changes nothing: its presence alone sends calls through the custom ops."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_direct_refuses_what_must_see_the_op():
    w = torch.randn(4, 4)
    assert _dispatch.direct(w, None) and _dispatch.direct(torch.nn.Parameter(w, requires_grad=False))
    assert _dispatch.eager(w.clone().requires_grad_()) and not _dispatch.direct(w.clone().requires_grad_())
    with _Watching():
        assert not _dispatch.eager(w)
    assert not _dispatch.direct(w.clone().requires_grad_())
    with torch.no_grad():
        assert _dispatch.direct(w.clone().requires_grad_())
    with FakeTensorMode() as mode:
        assert not _dispatch.direct(mode.from_tensor(w))
    assert not _dispatch.direct(torch.Tensor._make_subclass(type("Sub", (torch.Tensor,), {}), w))
    assert not torch.func.vmap(lambda t: torch.tensor(_dispatch.direct(t)))(w).any()
