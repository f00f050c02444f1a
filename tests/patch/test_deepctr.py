"""rankops.patch on DeepCTR-Torch's own models: DeepFM, DCN (vector and matrix), DCNMix, xDeepFM,
AutoInt, DIN (its default Dice attention, its Dice units on rankops.dice, and a sigmoid one).

Each test builds the model twice from one seed (or deep-copies it), patches one, and compares:
outputs and every parameter's gradient, the state dict, a few steps of the library's own
``model.fit``, unpatch (bit for bit), torch.compile, and what the report says.
"""

from __future__ import annotations

import copy

import pytest
import torch

import rankops
from tests.patch import peers

peers.import_deepctr()

MODELS = peers.DEEPCTR_MODELS
# the layers each model must have patched (paths in named_modules; "" is the model)
EXPECT = {
    "DeepFM": {"", "linear_model", "fm", "dnn"},
    "DCN": {"", "linear_model", "crossnet", "dnn"},
    "DCN-matrix": {"", "linear_model", "crossnet", "dnn"},
    "DCNMix": {"", "linear_model", "crossnet", "dnn"},
    "xDeepFM": {"", "linear_model", "cin", "dnn"},
    "AutoInt": {"", "linear_model", "int_layers.0", "int_layers.1", "dnn"},
    "DIN": {"", "attention", "attention.local_att", "attention.local_att.dnn.activation_layers.0",
            "attention.local_att.dnn.activation_layers.1", "dnn"},
    "DIN-sigmoid": {"", "attention", "attention.local_att", "dnn"},
}
BACKENDS = peers.BACKENDS


def _loss(model, X, y):
    """A loss touching every output, plus the library's regulariser (as fit() adds it)."""
    out = model(X).squeeze(-1)
    w = torch.linspace(-1, 1, out.numel()).view_as(out)
    return (out * w).sum() + ((out - y) ** 2).sum() + model.get_regularization_loss().sum()


def _run(model, X, y):
    model.zero_grad(set_to_none=True)
    loss = _loss(model, X, y)
    loss.backward()
    return loss.detach(), peers.grads(model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_outputs_and_gradients(name, backend):
    ref = peers.deepctr_model(name)
    model = copy.deepcopy(ref)
    X, y = peers.deepctr_batch(ref, B=peers.batch_size(backend, 32))
    report = rankops.patch(model, backend=backend)
    assert {e.path for e in report.patched} == EXPECT[name], report.table()
    for training in (True, False):
        ref.train(training), model.train(training)
        with torch.no_grad():
            peers.assert_close(model(X), ref(X), f"{name} output (training={training})")
    ref.train(), model.train()
    want_loss, want = _run(ref, X, y)
    got_loss, got = _run(model, X, y)
    peers.assert_close(got_loss, want_loss, f"{name} loss")
    assert got.keys() == want.keys()
    for k in want:
        peers.assert_close(got[k], want[k], f"{name} grad of {k}")
    # the buffers the training forwards updated (DIN's Dice: BatchNorm's running averages)
    want_state, got_state = peers.state(ref), peers.state(model)
    for k in want_state:
        peers.assert_close(got_state[k].double(), want_state[k].double(), f"{name} state {k} after training")


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_unchanged(name):
    ref = peers.deepctr_model(name)
    model = copy.deepcopy(ref)
    params = {n: p for n, p in model.named_parameters()}
    rankops.patch(model)
    assert {n: p for n, p in model.named_parameters()} == params  # the same Parameter objects
    want, got = peers.state(ref), peers.state(model)
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # a checkpoint of the unpatched model loads into the patched one and changes its outputs alike
    other = peers.deepctr_model(name, seed=5)
    model.load_state_dict(other.state_dict())
    X, _ = peers.deepctr_batch(ref)
    with torch.no_grad():
        peers.assert_close(model(X), other(X), f"{name} after load_state_dict")


@pytest.mark.parametrize("name", ["DeepFM", "DCN-matrix", "xDeepFM", "DIN"])
def test_fit_loss_curve(name):
    """model.fit (DeepCTR's loop: its Adam made in compile() before the patch, summed BCE, its L2
    on whole tables) gives the same losses patched and unpatched."""
    curves = []
    for patched in (False, True):
        model = peers.deepctr_model(name)
        model.compile("adam", "binary_crossentropy")
        if patched:
            rankops.patch(model)
        X, y = peers.deepctr_batch(model, B=96)
        hist = model.fit(peers.deepctr_arrays(model, X), y.numpy(), batch_size=32, epochs=3, verbose=0,
                         shuffle=False)
        curves.append(hist.history["loss"])
        if patched:  # and the weights it trained predict the same
            preds = model.predict(peers.deepctr_arrays(model, X), batch_size=48)
        else:
            want_preds = model.predict(peers.deepctr_arrays(model, X), batch_size=48)
    assert len(curves[1]) == 3
    peers.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), f"{name} fit loss curve")
    peers.assert_close(torch.tensor(preds), torch.tensor(want_preds), f"{name} predictions after fit",
                       rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_unpatch_is_bit_identical(name):
    ref = peers.deepctr_model(name)
    model = copy.deepcopy(ref)
    X, y = peers.deepctr_batch(ref)
    rankops.patch(model)
    _run(model, X, y)
    assert rankops.unpatch(model) == len(EXPECT[name])
    assert not any("forward" in m.__dict__ for m in model.modules())
    want_loss, want = _run(ref, X, y)
    got_loss, got = _run(model, X, y)
    assert torch.equal(got_loss, want_loss)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # each table has its own storage again
    ptrs = [m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert all(p.weight.untyped_storage().nbytes() == p.weight.numel() * p.weight.element_size()
               for p in model.modules() if isinstance(p, torch.nn.Embedding)), ptrs


@pytest.mark.parametrize("name", ["DeepFM", "DCN-matrix", "xDeepFM", "AutoInt", "DIN-sigmoid"])
def test_torch_compile(name):
    ref = peers.deepctr_model(name)
    model = copy.deepcopy(ref)
    X, _ = peers.deepctr_batch(ref, zero_length=False)
    rankops.patch(model, backend="cpp" if name == "DeepFM" else None)  # (a pinned backend compiles too)
    compiled = torch.compile(model)
    out = compiled(X)
    out.sum().backward()
    peers.assert_close(out.detach(), ref(X).detach(), f"{name} compiled output")
    assert all(p.grad is not None for n, p in model.named_parameters() if "embedding_dict" in n)


def test_report_left_and_not_covered():
    # a DNN with BatchNorm: recognised, left, with the reason; PredictionLayer: not covered
    model = peers.deepctr_model("DIN", dnn_use_bn=True)
    dnn_before = model.dnn.__dict__.get("forward")
    report = rankops.patch(model)
    left = {e.path: e.detail for e in report.left}
    assert "use_bn" in left["dnn"]
    assert dnn_before is None and "forward" not in model.dnn.__dict__
    assert "out" in {e.path for e in report.not_covered}
    text = str(report)
    assert "left" in text and "not covered" in text and "attention.local_att" in text


def test_include_exclude_and_repatch():
    model = peers.deepctr_model("xDeepFM")
    report = rankops.patch(model, exclude=["cin", "DNN"])
    assert {e.path for e in report.excluded} == {"cin", "dnn"}
    assert "forward" not in model.cin.__dict__
    again = rankops.patch(model, include="deepctr_torch.layers.interaction.CIN")
    assert {e.path for e in again.patched} == {"", "linear_model", "cin"}
    assert [e.detail for e in again.patched if e.path == ""] == ["already patched"]
    rankops.unpatch(model)
    assert not any(k in m.__dict__ for m in model.modules() for k in ("forward", "input_from_feature_columns"))


def test_out_of_range_id_raises_index_error():
    model = peers.deepctr_model("DeepFM")
    X, _ = peers.deepctr_batch(model)
    rankops.patch(model)
    X[3, model.feature_index["C2"][0]] = 1000.0
    with pytest.raises(IndexError, match="C2"):
        model(X)


def test_tables_moved_after_patch_are_restacked():
    ref = peers.deepctr_model("DeepFM")
    model = copy.deepcopy(ref)
    rankops.patch(model)
    model._apply(lambda t: t.clone())  # what model.to(...) does: every Parameter gets new data
    X, y = peers.deepctr_batch(ref)
    peers.assert_close(model(X), ref(X), "DeepFM after its tables moved")
    _, want = _run(ref, X, y)
    _, got = _run(model, X, y)
    for k in want:
        peers.assert_close(got[k], want[k], f"grad of {k} after the tables moved")
    # float64 is not a dtype of the rankops ops: the library's own code serves it
    model.double(), ref.double()
    with torch.no_grad():
        assert torch.equal(model(X.double()), ref(X.double()))


def test_user_subclass_overriding_forward_is_left():
    from deepctr_torch.layers.interaction import FM

    class MyFM(FM):
        def forward(self, inputs):
            return super().forward(inputs) * 2

    holder = torch.nn.Sequential(MyFM(), FM(), torch.nn.Linear(3, 3))
    report = rankops.patch(holder)
    assert [(e.path, e.status) for e in report.entries] == [("0", "left"), ("1", "patched")]
    assert "overrides" in report.entries[0].detail
    x = torch.randn(4, 5, 3)
    peers.assert_close(holder[0](x), 2 * FM()(x), "MyFM untouched")


def test_deep_copy_of_a_patched_model():
    """A copy carries the patched methods but not their state: it runs the library's code (on its
    own weights) until patched itself; unpatching it leaves no trace."""
    ref = peers.deepctr_model("xDeepFM")
    model = copy.deepcopy(ref)
    rankops.patch(model)
    twin = copy.deepcopy(model)
    X, _ = peers.deepctr_batch(ref)
    with torch.no_grad():
        for m in (twin, ref):
            m.embedding_dict["C0"].weight.mul_(2.0)
        assert torch.equal(twin(X), ref(X))
        assert len(rankops.patch(twin).patched) == 4
        peers.assert_close(twin(X), ref(X), "patched copy")
    rankops.unpatch(twin)
    assert not any("forward" in m.__dict__ for m in twin.modules())


@pytest.mark.parametrize("negative", [False, True], ids=["folded", "negative-weight"])
def test_din_dice_inference_on_running_statistics(negative):
    """DIN's Dice attention in inference: rankops.din_attention on the running statistics with
    BatchNorm's affine folded in gives DeepCTR's outputs; a non-positive BatchNorm weight (the fold
    would flip the gate) runs the unit as written, with the same outputs."""
    ref = peers.deepctr_model("DIN")
    X, _ = peers.deepctr_batch(ref, B=40)
    ref.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics off their initial (0, 1)
            ref(X)
        for a in ref.attention.local_att.dnn.activation_layers:
            n = a.bn.num_features
            a.bn.weight.copy_(torch.rand(n) + 0.5)
            a.bn.bias.copy_(torch.randn(n))
            a.alpha.copy_(torch.rand_like(a.alpha))
        if negative:
            ref.attention.local_att.dnn.activation_layers[0].bn.weight[3] = -0.7
    model = copy.deepcopy(ref)
    rankops.patch(model)
    ref.eval(), model.eval()
    calls = []
    original = rankops.din_attention
    rankops.din_attention = lambda *a, **k: calls.append(k["activation"]) or original(*a, **k)
    try:
        with torch.no_grad():
            got, want = model(X), ref(X)
    finally:
        rankops.din_attention = original
    peers.assert_close(got, want, "DIN eval output")
    assert calls == ([] if negative else ["dice"])
