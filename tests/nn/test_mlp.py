"""rankops.nn.MLP: a first layer over an input of odd width writes its input gradient into rows padded
to whole cache lines (MKL's unaligned-row speed), with nn.Linear's values."""

import pytest
import torch

import rankops
from rankops.nn.mlp import MLP


def _grads(mlp, x, g):
    x = x.detach().requires_grad_()
    out = mlp(x)
    return out, torch.autograd.grad(out, [x, *mlp.parameters()], g)


def _nodes(t) -> set[str]:
    """The names of the autograd nodes behind ``t``. ``seen`` holds the node objects themselves: torch 2.11
    hands out a fresh Python object per ``next_functions`` access, and the id of one already freed came
    back for another node, which the walk then skipped (the first layer went missing)."""
    seen, todo = {}, [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and id(fn) not in seen:
            seen[id(fn)] = fn
            todo.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen.values()}


# (BatchNorm1d takes [B, C] only: a [3, 5, C] input is for the other norms)
@pytest.mark.parametrize("in_dim, hidden, shape, norm, dropout", [
    (429, (64, 32), (96,), None, 0.0), (429, (64, 32), (96,), "batch", 0.0), (429, (64,), (96,), "layer", 0.3),
    (70, (16,), (3, 5), None, 0.0), (70, (16,), (3, 5), "layer", 0.3), (64, (16,), (8,), None, 0.0),
    (64, (16,), (8,), "batch", 0.0)])
def test_aligned_first_layer_equals_linear(in_dim, hidden, shape, norm, dropout):
    torch.manual_seed(0)
    mlp = MLP(in_dim, hidden, "relu", dropout=dropout, norm=norm)
    x, g = torch.randn(*shape, in_dim), torch.randn(*shape, hidden[-1])
    torch.manual_seed(1)
    out, grads = _grads(mlp, x, g)
    torch.manual_seed(1)  # the same dropout masks
    with rankops.use_backend("reference"):  # the modules one by one: what a user writes
        ref, ref_grads = _grads(mlp, x, g)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same product
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    aligned = "_AlignedGradLinearBackward" in _nodes(out)
    assert aligned == (in_dim % 16 != 0), _nodes(out)  # 64 wide rows are whole cache lines already


def test_no_input_gradient_no_aligned_path():
    mlp = MLP(429, (8,))
    out = mlp(torch.randn(4, 429))
    assert "_AlignedGradLinearBackward" not in _nodes(out)
    out.sum().backward()
    assert mlp.layers[0].weight.grad is not None


def test_compiled_aligned_first_layer_matches_eager():
    torch.manual_seed(0)
    mlp = MLP(429, (32, 16))
    x, g = torch.randn(24, 429), torch.randn(24, 16)
    compiled = torch.compile(mlp, fullgraph=True)
    out, grads = _grads(compiled, x, g)
    ref, ref_grads = _grads(mlp, x, g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_autocast_trains_through_nn_linear():
    """Under autocast the first layer runs in bf16 as nn.Linear does (its gradient too)."""
    mlp = MLP(429, (32,))
    x = torch.randn(8, 429, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
    assert out.dtype == torch.bfloat16 and "_AlignedGradLinearBackward" not in _nodes(out)
    out.float().sum().backward()
    assert x.grad.shape == x.shape and mlp.layers[0].weight.grad is not None
