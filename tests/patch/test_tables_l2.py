"""rankops.patch's whole-table L2 (DeepCTR-Torch's regulariser on stacked tables): folded into the
lookup's dense gradient when the same backward runs a lookup of those tables, its own product when
not; the gradients equal plain PyTorch's either way."""

import torch
from torch import nn

from rankops.patch import _tables


def _setup():
    torch.manual_seed(0)
    tables = [nn.Parameter(torch.randn(50, 8)), nn.Parameter(torch.randn(30, 8))]
    plain = [nn.Parameter(t.detach().clone()) for t in tables]
    stack = _tables.StackedTables(tables)
    ids = torch.tensor([[1, 2], [49, 29], [0, 0]])
    return tables, plain, stack, ids


def _plain_loss(plain, ids, scale):
    rows = torch.stack([plain[0][ids[:, 0]], plain[1][ids[:, 1]]], 1)
    return (rows.sum(1) ** 2).sum() + sum(scale * (p ** 2).sum() for p in plain)


def _patched_loss(stack, ids, scale):
    rows = _tables.lookup(stack, _tables.global_rows(stack, ids, torch.tensor([0, 1]), ["a", "b"]))
    return (rows.sum(1) ** 2).sum() + _tables.l2(stack, scale).sum()


def test_l2_folds_into_the_lookup_and_equals_plain(monkeypatch):
    tables, plain, stack, ids = _setup()
    folded = []
    backward = _tables._Alias.backward

    def spy(ctx, grad):
        folded.append(ctx.stack.pending_l2 is not None)
        return backward(ctx, grad)

    monkeypatch.setattr(_tables._Alias, "backward", staticmethod(spy))
    for step in range(3):  # several backwards: nothing pending carries over
        for p in tables + plain:
            p.grad = None
        _patched_loss(stack, ids, 0.1).backward()
        _plain_loss(plain, ids, 0.1).backward()
        for a, b in zip(tables, plain):
            torch.testing.assert_close(a.grad, b.grad)
        assert stack.pending_l2 is None
    assert folded == [True, True, True]  # the L2's gradient rode the lookup's every time


def test_l2_alone_and_autograd_grad():
    tables, plain, stack, ids = _setup()
    got = torch.autograd.grad(_tables.l2(stack, 0.3).sum(), tables)  # no lookup in this backward
    want = torch.autograd.grad(sum(0.3 * (p ** 2).sum() for p in plain), plain)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    got = torch.autograd.grad(_patched_loss(stack, ids, 0.3), tables)  # the fold, returned not accumulated
    want = torch.autograd.grad(_plain_loss(plain, ids, 0.3), plain)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in tables)


def test_l2_after_an_earlier_lookup_only_backward():
    """A lookup whose backward already ran (an earlier step) does not take the L2's gradient."""
    tables, plain, stack, ids = _setup()
    rows = _tables.lookup(stack, _tables.global_rows(stack, ids, torch.tensor([0, 1]), ["a", "b"]))
    rows.sum().backward()
    got = torch.autograd.grad(_tables.l2(stack, 0.3).sum(), tables)
    want = torch.autograd.grad(sum(0.3 * (p ** 2).sum() for p in plain), plain)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert stack.pending_l2 is None
