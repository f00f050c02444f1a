"""rankops.patch on torch-rechub's own models: DeepFM, DCNv2 (full rank and mixture), DIN, MMOE."""

from __future__ import annotations

import copy

import pytest
import torch

import rankops
from tests.patch import peers

peers.import_rechub()

MODELS = peers.RECHUB_MODELS
EXPECT = {
    "DeepFM": {"embedding", "fm", "mlp"},
    "DCNv2": {"embedding", "crossnet", "parallel_dnn"},
    "DCNv2-mix": {"embedding", "crossnet", "parallel_dnn"},
    "DIN": {"embedding", "attention_layers.0", "attention_layers.0.attention", "attention_layers.1",
            "attention_layers.1.attention", "mlp",
            # its Dice units: in both attention units and the top MLP
            *(f"{u}.mlp.{i}" for u in ("attention_layers.0.attention", "attention_layers.1.attention", "mlp")
              for i in (2, 6))},
    "MMOE": {"embedding", "experts.0", "experts.1", "experts.2", "gates.0", "gates.1", "towers.0", "towers.1"},
}
BACKENDS = peers.BACKENDS


def _out(model, x):
    out = model(x)
    return out if out.dim() == 2 else out.unsqueeze(1)


def _run(model, x, y):
    model.zero_grad(set_to_none=True)
    out = _out(model, x)
    w = torch.linspace(-1, 1, out.numel()).view_as(out)
    loss = (out * w).sum() + torch.nn.functional.binary_cross_entropy(out[:, 0], y)
    loss.backward()
    return out.detach(), peers.grads(model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_outputs_and_gradients(name, backend):
    ref = peers.rechub_model(name)
    model = copy.deepcopy(ref)
    report = rankops.patch(model, backend=backend)
    assert {e.path for e in report.patched} == EXPECT[name], report.table()
    x, y = peers.rechub_batch(B=peers.batch_size(backend, 24))
    want_out, want = _run(ref, x, y)
    got_out, got = _run(model, x, y)
    peers.assert_close(got_out, want_out, f"{name} output")
    for k in want:
        peers.assert_close(got[k], want[k], f"{name} grad of {k}")
    ref.eval(), model.eval()  # inference: running statistics, BatchNorm folded into the Linears
    with torch.no_grad():
        peers.assert_close(_out(model, x), _out(ref, x), f"{name} eval output")


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_and_training_loop(name):
    curves, states = [], []
    for patched in (False, True):
        model = peers.rechub_model(name)
        # (SGD, not Adam: the bias of a Linear before a BatchNorm has a gradient that is rounding noise
        # around 0, which Adam would scale up to full-size steps of random sign)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)
        if patched:
            before = peers.state(model)
            rankops.patch(model)
            after = peers.state(model)
            assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
        losses = []
        for step in range(4):
            x, y = peers.rechub_batch(seed=step)
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy(_out(model, x)[:, 0], y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(torch.tensor(losses))
        states.append(peers.state(model))
    peers.assert_close(curves[1], curves[0], f"{name} loss curve")
    for k in states[0]:
        peers.assert_close(states[1][k], states[0][k], f"{name} trained {k}", rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_unpatch_is_bit_identical(name):
    ref = peers.rechub_model(name)
    model = copy.deepcopy(ref)
    x, y = peers.rechub_batch()
    rankops.patch(model)
    _run(model, x, y)
    assert rankops.unpatch(model) == len(EXPECT[name])
    want_out, want = _run(ref, x, y)
    got_out, got = _run(model, x, y)
    assert torch.equal(got_out, want_out)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("name", ["DeepFM", "DIN"])
def test_torch_compile(name):
    ref = peers.rechub_model(name)
    model = copy.deepcopy(ref)
    rankops.patch(model)
    x, _ = peers.rechub_batch()
    out = torch.compile(model)(x)
    out.sum().backward()
    peers.assert_close(out.detach(), ref(x).detach(), f"{name} compiled")


def test_sequence_pooling_and_shared_tables():
    """EmbeddingLayer with sum / mean sequences, a table shared by a sparse feature and a sequence,
    and a padding_idx table (left alone: its gradient rule is not reproduced)."""
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.basic.layers import EmbeddingLayer

    torch.manual_seed(0)
    item = SparseFeature("item", 30, embed_dim=4)
    seqs = [SequenceFeature("s_sum", 30, embed_dim=4, pooling="sum", shared_with="item"),
            SequenceFeature("s_mean", 11, embed_dim=4, pooling="mean")]
    layer = EmbeddingLayer([item] + seqs)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    ref = copy.deepcopy(layer)
    assert len(rankops.patch(layer).patched) == 1
    g = torch.Generator().manual_seed(3)
    x = {"item": torch.randint(0, 30, (6,), generator=g), "s_sum": torch.randint(0, 30, (6, 4), generator=g),
         "s_mean": torch.randint(0, 11, (6, 4), generator=g)}
    for feats in ([item], seqs, seqs[1:]):
        for squeeze in (False, True):
            got, want = layer(x, feats, squeeze_dim=squeeze), ref(x, feats, squeeze_dim=squeeze)
            peers.assert_close(got, want, f"{[f.name for f in feats]} squeeze={squeeze}")
            got.square().sum().backward()
            want.square().sum().backward()
    for (n, p), (_, q) in zip(layer.named_parameters(), ref.named_parameters()):
        peers.assert_close(p.grad, q.grad, f"grad of {n}")

    padded = EmbeddingLayer([SparseFeature("p", 10, embed_dim=4, padding_idx=0)])
    report = rankops.patch(padded)
    assert report.left and "padding_idx" in report.left[0].detail


def test_cin_and_crossnetwork():
    from torch_rechub.basic.layers import CIN, CrossNetwork

    torch.manual_seed(0)
    for layer, x in ((CIN(5, [6, 4, 3]), torch.randn(7, 5, 3)), (CIN(5, [4, 2], split_half=False), torch.randn(7, 5, 3)),
                     (CrossNetwork(9, 3), torch.randn(7, 9))):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        ref = copy.deepcopy(layer)
        assert len(rankops.patch(layer).patched) == 1
        got, want = layer(x), ref(x)
        peers.assert_close(got, want, type(layer).__name__)
        got.square().sum().backward()
        want.square().sum().backward()
        for (n, p), (_, q) in zip(layer.named_parameters(), ref.named_parameters()):
            peers.assert_close(p.grad, q.grad, f"{type(layer).__name__} grad of {n}")


def test_dice_as_layer_norm():
    """rechub's Dice (per-row statistics, eps inside a sum over the units) patched onto layer_norm:
    the same values and gradients, constant rows (where only eps keeps it finite) included."""
    from torch_rechub.basic.activation import Dice

    ref = Dice(epsilon=1e-3)
    with torch.no_grad():
        ref.alpha.fill_(0.3)
    model = copy.deepcopy(ref)
    report = rankops.patch(model)
    assert [e.path for e in report.patched] == [""]
    x = torch.randn(50, 40) * 3 + 1
    x[:5] = 2.0  # zero variance
    x[5:10] *= 1e-3  # variance below eps
    grad = torch.randn(50, 40)
    outs = []
    for m in (ref, model):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, m.alpha.grad))
    for name, a, b in zip(("y", "dx", "dalpha"), outs[1], outs[0]):
        peers.assert_close(a, b, f"dice {name}")
