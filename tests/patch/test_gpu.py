"""rankops.patch on CUDA: the zoos' models on the GPU, patched with rankops' default choice per op
(``auto``: the CUDA kernels where they exist, else Triton) and pinned to Triton, against the same
model unpatched. Runs in the GPU suite; skipped (with the reason) elsewhere."""

from __future__ import annotations

import copy

import pytest

import rankops
from tests.patch import peers

pytestmark = pytest.mark.gpu

BACKENDS = [None, "triton"]


def _grads_close(model, ref, what):
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if q.grad is not None:
            peers.assert_close(p.grad, q.grad, f"{what} grad of {n}", rtol=1e-3, atol=1e-4, floor=1e-5)


@pytest.mark.parametrize("backend", BACKENDS, ids=["auto", "triton"])
@pytest.mark.parametrize("name", ["DeepFM", "DCN-matrix", "DCNMix", "xDeepFM", "AutoInt", "DIN-sigmoid"])
def test_deepctr_on_cuda(name, backend):
    peers.import_deepctr()
    ref = peers.deepctr_model(name, device="cuda")
    model = copy.deepcopy(ref)
    X, y = peers.deepctr_batch(ref, B=64)
    X = X.cuda()
    rankops.patch(model, backend=backend)
    got, want = model(X), ref(X)
    peers.assert_close(got, want, f"{name} output", rtol=1e-3, atol=1e-4)
    (got.sum() + model.get_regularization_loss().sum()).backward()
    (want.sum() + ref.get_regularization_loss().sum()).backward()
    _grads_close(model, ref, name)


@pytest.mark.parametrize("backend", BACKENDS, ids=["auto", "triton"])
@pytest.mark.parametrize("name", peers.RECHUB_MODELS)
def test_rechub_on_cuda(name, backend):
    peers.import_rechub()
    ref = peers.rechub_model(name).cuda()
    model = copy.deepcopy(ref)
    x, _ = peers.rechub_batch(B=64)
    x = {k: v.cuda() for k, v in x.items()}
    rankops.patch(model, backend=backend)
    got, want = model(x), ref(x)
    peers.assert_close(got, want, f"{name} output", rtol=1e-3, atol=1e-4)
    got.sum().backward()
    want.sum().backward()
    _grads_close(model, ref, name)
