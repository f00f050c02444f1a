"""rankops.patch on TorchRec's own models (DLRM, DLRM_DCN, SimpleDeepFMNN) and modules
(EmbeddingBagCollection, the four cross networks, FactorizationMachine, InteractionArch)."""

from __future__ import annotations

import copy

import pytest
import torch

import rankops
from tests.patch import peers

peers.import_torchrec()

MODELS = peers.TORCHREC_MODELS
EXPECT = {
    "DLRM": {"sparse_arch.embedding_bag_collection", "inter_arch"},
    "DLRM_DCN": {"sparse_arch.embedding_bag_collection", "inter_arch.crossnet"},
    "SimpleDeepFMNN": {"sparse_arch.embedding_bag_collection", "inter_arch.fm"},
}
BACKENDS = peers.BACKENDS


def _run(model, dense, kjt, y):
    model.zero_grad(set_to_none=True)
    out = model(dense, kjt).squeeze(-1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y) + (out * torch.linspace(-1, 1, len(out))).sum()
    loss.backward()
    return out.detach(), peers.grads(model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_outputs_and_gradients(name, backend):
    ref = peers.torchrec_model(name)
    model = copy.deepcopy(ref)
    report = rankops.patch(model, backend=backend)
    assert {e.path for e in report.patched} == EXPECT[name], report.table()
    dense, kjt, y = peers.torchrec_batch(B=peers.batch_size(backend, 16))
    want_out, want = _run(ref, dense, kjt, y)
    got_out, got = _run(model, dense, kjt, y)
    peers.assert_close(got_out, want_out, f"{name} output")
    for k in want:
        peers.assert_close(got[k], want[k], f"{name} grad of {k}")


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_and_training_loop(name):
    """Same state dict; a plain loop (Adagrad made before the patch, as TorchRec's examples train
    the tables) gives the same loss curve and the same trained weights."""
    curves, states = [], []
    for patched in (False, True):
        model = peers.torchrec_model(name)
        opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
        if patched:
            before = peers.state(model)
            rankops.patch(model)
            after = peers.state(model)
            assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
        losses = []
        for step in range(4):
            dense, kjt, y = peers.torchrec_batch(seed=step)
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, kjt).squeeze(-1), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(torch.tensor(losses))
        states.append(peers.state(model))
    peers.assert_close(curves[1], curves[0], f"{name} loss curve")
    assert list(states[1]) == list(states[0])
    for k in states[0]:
        peers.assert_close(states[1][k], states[0][k], f"{name} trained {k}")


@pytest.mark.parametrize("name", MODELS)
def test_unpatch_is_bit_identical(name):
    ref = peers.torchrec_model(name)
    model = copy.deepcopy(ref)
    dense, kjt, y = peers.torchrec_batch()
    rankops.patch(model)
    _run(model, dense, kjt, y)
    assert rankops.unpatch(model) == len(EXPECT[name])
    want_out, want = _run(ref, dense, kjt, y)
    got_out, got = _run(model, dense, kjt, y)
    assert torch.equal(got_out, want_out)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("name", ["DLRM"])  # (each compile takes 20-30 s on the 2-core machine)
def test_torch_compile(name):
    ref = peers.torchrec_model(name)
    model = copy.deepcopy(ref)
    rankops.patch(model)
    dense, kjt, _ = peers.torchrec_batch()
    out = torch.compile(model)(dense, kjt)
    out.sum().backward()
    peers.assert_close(out.detach(), ref(dense, kjt).detach(), f"{name} compiled")
    assert model.sparse_arch.embedding_bag_collection.embedding_bags["t0"].weight.grad is not None


# ---------------------------------------------------------------------------------------------
# the modules on their own


@pytest.mark.parametrize("case", ["mean", "two-groups", "weighted", "keys-reordered"])
def test_embedding_bag_collection_variants(case):
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    tables = peers.TORCHREC_TABLES
    keys = None
    if case == "mean":
        ebc = peers.torchrec_ebc(pooling="MEAN")
    elif case == "two-groups":  # dims 8 and 4, pooling sum and mean: three calls
        cfgs = [EmbeddingBagConfig(name=n, embedding_dim=8 if i % 2 else 4, num_embeddings=r,
                                   feature_names=[f"f_{n}"], pooling=PoolingType.MEAN if i == 2 else PoolingType.SUM)
                for i, (n, r) in enumerate(tables)]
        ebc = EmbeddingBagCollection(tables=cfgs)
    elif case == "weighted":
        cfgs = [EmbeddingBagConfig(name=n, embedding_dim=8, num_embeddings=r, feature_names=[f"f_{n}"])
                for n, r in tables]
        ebc = EmbeddingBagCollection(tables=cfgs, is_weighted=True)
    else:
        ebc = peers.torchrec_ebc()
        keys = ["f_t2", "f_t0", "f_extra", "f_t3", "f_t1"]
        tables = tables + [("extra", 5)]
    ref = copy.deepcopy(ebc)
    kjt = peers.torchrec_kjt(B=12, tables=tables, keys=keys, weighted=case == "weighted")
    report = rankops.patch(ebc)
    assert len(report.patched) == 1, report.table()
    got, want = ebc(kjt), ref(kjt)
    assert got.keys() == want.keys() and got.length_per_key() == want.length_per_key()
    peers.assert_close(got.values(), want.values(), f"{case} pooled")
    g = torch.randn_like(want.values())
    (got.values() * g).sum().backward()
    (want.values() * g).sum().backward()
    for (n, p), (_, q) in zip(ebc.named_parameters(), ref.named_parameters()):
        peers.assert_close(p.grad, q.grad, f"{case} grad of {n}")


def test_embedding_bag_collection_shared_table_is_left():
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10,
                                                            feature_names=["a", "b"])])
    report = rankops.patch(ebc)
    assert report.left and "2 features" in report.left[0].detail and "forward" not in ebc.__dict__


@pytest.mark.parametrize("kind", ["CrossNet", "LowRankCrossNet", "VectorCrossNet", "LowRankMixtureCrossNet",
                                  "LowRankMixtureCrossNet-1", "LowRankMixtureCrossNet-tanh"])
def test_crossnets(kind):
    from torchrec.modules import crossnet

    torch.manual_seed(0)
    N = 13
    net = {"CrossNet": lambda: crossnet.CrossNet(N, 3),
           "LowRankCrossNet": lambda: crossnet.LowRankCrossNet(N, 3, low_rank=4),
           "VectorCrossNet": lambda: crossnet.VectorCrossNet(N, 3),
           "LowRankMixtureCrossNet": lambda: crossnet.LowRankMixtureCrossNet(N, 2, num_experts=3, low_rank=4),
           "LowRankMixtureCrossNet-1": lambda: crossnet.LowRankMixtureCrossNet(N, 2, num_experts=1, low_rank=4),
           "LowRankMixtureCrossNet-tanh": lambda: crossnet.LowRankMixtureCrossNet(N, 2, num_experts=2, low_rank=3,
                                                                                  activation=torch.nn.Tanh()),
           }[kind]()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-zero biases
    ref = copy.deepcopy(net)
    assert len(rankops.patch(net).patched) == 1
    x = torch.randn(9, N)
    got, want = net(x), ref(x)
    peers.assert_close(got, want, kind)
    got.square().sum().backward()
    want.square().sum().backward()
    for (n, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        peers.assert_close(p.grad, q.grad, f"{kind} grad of {n}")


def test_mixture_with_unknown_activation_is_left():
    from torchrec.modules.crossnet import LowRankMixtureCrossNet

    net = LowRankMixtureCrossNet(6, 1, num_experts=2, low_rank=2, activation=lambda t: t.softmax(-1))
    report = rankops.patch(net)
    assert report.left and "elementwise" in report.left[0].detail


def test_interaction_arch_pair_order():
    from torchrec.models.dlrm import InteractionArch

    arch = InteractionArch(num_sparse_features=5)
    ref = copy.deepcopy(arch)
    rankops.patch(arch)
    dense, sparse = torch.randn(7, 6, requires_grad=True), torch.randn(7, 5, 6, requires_grad=True)
    got, want = arch(dense, sparse), ref(dense, sparse)
    peers.assert_close(got, want, "InteractionArch")
    gd, gs = torch.autograd.grad(got.sum(), (dense, sparse))
    wd, ws = torch.autograd.grad(want.sum(), (dense, sparse))
    peers.assert_close(gd, wd, "d dense"), peers.assert_close(gs, ws, "d sparse")
