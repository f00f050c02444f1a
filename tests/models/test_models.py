"""Every model of the zoo (no skip list) on one schema with dense, one-hot, multi-hot and sequence
features and two tasks: shapes, fused vs reference, a step lowers the loss, torch.compile, state
dict, and the errors a user sees for a schema or batch the model cannot take."""

import copy

import pytest
import torch

import rankops
import rankops.models as zoo
from rankops.data.schema import Schema
from rankops.data.synthetic import random_batch
from rankops.ops.embedding_bag import FusedOptimizer

SCHEMA = Schema(
    dense=[{"name": "age"}, {"name": "user_vec", "dim": 3}],
    sparse=[{"name": "user", "vocab_size": 37, "embedding_dim": 8},
            {"name": "item", "vocab_size": 29, "embedding_dim": 8},
            {"name": "tags", "vocab_size": 19, "embedding_dim": 8, "multi_hot": True, "pooling": "mean"}],
    sequences=[{"name": "hist_item", "target": "item", "max_len": 7}],
    tasks=[{"name": "click"}, {"name": "buy", "weight": 0.5}],
)
B = 23
SMALL = dict(dnn_hidden_units=(16, 8))  # small MLPs; options every Ranker-based model takes
CONFIG = {n: dict(SMALL) for n in zoo.names()}
CONFIG["dlrm"] = dict(bottom_mlp=(16,), dnn_hidden_units=(16,))
CONFIG["esmm"] = dict(tower_hidden_units=(16, 8))
for n in ("mmoe", "ple"):
    CONFIG[n].update(expert_hidden_units=(16,), tower_hidden_units=(8,))
CONFIG["shared_bottom"].update(tower_hidden_units=(8,))
CONFIG["xdeepfm"].update(cin_layer_size=(6, 4))


@pytest.fixture(scope="module")
def batch():
    b = random_batch(SCHEMA, B, seed=1)
    b.validate(SCHEMA)
    return b


def make(name, seed=0):
    torch.manual_seed(seed)
    return zoo.build(name, SCHEMA, **CONFIG[name])


@pytest.fixture(scope="module", params=zoo.names())
def model_name(request):
    return request.param


def test_names_cover_the_zoos():
    want = {"lr", "fm", "dnn", "wide_deep", "dcn", "dcnv2", "deepfm", "xdeepfm", "dlrm", "autoint", "din", "bst",
            "shared_bottom", "mmoe", "ple", "esmm", "ranker"}
    assert set(zoo.names()) == want


def test_forward_shape_and_loss(model_name, batch):
    m = make(model_name)
    out = m(batch)
    assert out.shape == (B, SCHEMA.num_tasks) and torch.isfinite(out).all()
    p = m.predict(out)
    assert ((p >= 0) & (p <= 1)).all()  # both tasks binary
    assert torch.isfinite(m.loss(out, batch.labels))


def _grads(m, batch):
    m.zero_grad(set_to_none=True)
    out = m(batch)
    m.loss(out, batch.labels).backward()
    return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_fused_equals_reference(model_name, batch):
    m = make(model_name).eval()  # eval: no dropout, Dice on running statistics
    out, grads = _grads(m, batch)
    with rankops.use_backend("reference"):
        ref_out, ref_grads = _grads(m, batch)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=lambda s: f"{n}: {s}")
    # every parameter is reached by the loss: nothing is built and left unused
    unused = [n for n, p in m.named_parameters() if p.requires_grad and n not in grads]
    assert not unused, unused


def test_one_step_lowers_the_loss(model_name, batch):
    m = make(model_name).eval()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = m.loss(m(batch), batch.labels)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = m.loss(m(batch), batch.labels)
    assert after.item() < before.item()


def test_state_dict_round_trip(model_name, batch):
    a, b = make(model_name, seed=0).eval(), make(model_name, seed=1).eval()
    with torch.no_grad():
        assert not torch.equal(a(batch), b(batch))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(a(batch), b(batch), rtol=0, atol=0)


def test_compile_fullgraph_matches_eager(model_name, batch):
    torch._dynamo.reset()  # every Ranker shares one forward: start each model from a clean cache
    m = make(model_name).eval()
    with torch.no_grad():
        eager = m(batch)
        compiled = torch.compile(m, fullgraph=True)(batch)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_fused_embedding_optimizer_trains(batch):
    m = zoo.build("deepfm", SCHEMA, embedding_optimizer=FusedOptimizer("rowwise_adagrad", lr=0.1), **SMALL)
    m.eval()
    tables = [w.detach().clone() for w in m.features.embeddings.weights]
    assert all(not w.requires_grad for w in m.features.embeddings.weights)
    loss = m.loss(m(batch), batch.labels)
    loss.backward()  # the table update happens inside the backward
    assert any(not torch.equal(a, w) for a, w in zip(tables, m.features.embeddings.weights))


# ---------------------------------------------------------------------------------------------
# what a user gets wrong


def test_schema_a_model_cannot_use():
    no_seq = SCHEMA.subset(drop=["hist_item"])
    for name in ("din", "bst"):
        with pytest.raises(ValueError, match=rf"rankops.models.{name}: needs a behaviour sequence"):
            zoo.build(name, no_seq)
    one_task = SCHEMA.subset(tasks=["click"])
    for name in ("mmoe", "ple", "shared_bottom", "esmm"):
        with pytest.raises(ValueError, match=rf"rankops.models.{name}: .*(2 tasks|two binary tasks)"):
            zoo.build(name, one_task)
    mixed = Schema.from_dict({**SCHEMA.subset(drop=["hist_item"]).to_dict()})
    mixed.sparse[0].embedding_dim = 4
    for name in ("fm", "deepfm", "xdeepfm", "autoint", "dlrm"):
        with pytest.raises(ValueError, match=rf"rankops.models.{name}: .*one embedding_dim"):
            zoo.build(name, mixed)
    zoo.build("dcnv2", mixed)  # a cross network concatenates: mixed dims are fine
    with pytest.raises(ValueError, match="unknown model 'deepfn'"):
        zoo.build("deepfn", SCHEMA)
    with pytest.raises(ValueError, match=r"rankops.models.deepfm: unknown option\(s\) \['dnn_hiden_units'\]"):
        zoo.build("deepfm", SCHEMA, dnn_hiden_units=(8,))


def test_bad_schema_files(tmp_path):
    with pytest.raises(ValueError, match="targets 'nope'"):
        Schema.from_dict({"sparse": [{"name": "a", "vocab_size": 3}], "sequences": [{"name": "s", "target": "nope"}]})
    with pytest.raises(ValueError, match="unique"):
        Schema.from_dict({"sparse": [{"name": "a", "vocab_size": 3}, {"name": "a", "vocab_size": 3}]})
    with pytest.raises(ValueError, match="schema: .*vocab_sise"):
        Schema.from_dict({"sparse": [{"name": "a", "vocab_sise": 3}]})
    with pytest.raises(FileNotFoundError):
        Schema.load(tmp_path / "missing.yaml")


def test_schema_yaml_json_round_trip(tmp_path):
    for suffix in (".yaml", ".json"):
        SCHEMA.save(tmp_path / f"s{suffix}")
        assert Schema.load(tmp_path / f"s{suffix}") == SCHEMA
    assert zoo.build("dnn", tmp_path / "s.yaml", **SMALL).schema == SCHEMA


def test_bad_batches(batch):
    m = make("deepfm").eval()
    kjt = batch.sparse
    from rankops.data.batch import Batch
    from rankops.nn import KeyedJaggedTensor

    missing = Batch(batch.dense, KeyedJaggedTensor(kjt.keys()[:2], kjt.values()[:2 * B], offsets=kjt.offsets()[:2 * B + 1]),
                    batch.sequences, batch.labels)
    with pytest.raises(ValueError, match="tags"):
        missing.validate(SCHEMA)
    with pytest.raises(ValueError, match="tags"):
        m(missing)
    floats = Batch(batch.dense, KeyedJaggedTensor(kjt.keys(), kjt.values().float(), offsets=kjt.offsets()),
                   batch.sequences, batch.labels)
    with pytest.raises(TypeError):
        floats.validate(SCHEMA)
    with pytest.raises((TypeError, ValueError)):
        m(floats)
    big = kjt.values().clone()
    big[0] = 37  # user's vocabulary is [0, 37)
    out_of_range = Batch(batch.dense, KeyedJaggedTensor(kjt.keys(), big, offsets=kjt.offsets()), batch.sequences,
                         batch.labels)
    with pytest.raises(IndexError, match="user"):
        out_of_range.validate(SCHEMA)
    with pytest.raises(IndexError):
        m(out_of_range)
    ids, lengths = batch.sequences["hist_item"]
    bad_seq = Batch(batch.dense, kjt, {"hist_item": (torch.full_like(ids, 29), lengths.clamp(min=1))}, batch.labels)
    with pytest.raises(IndexError, match="hist_item"):
        bad_seq.validate(SCHEMA)
    with pytest.raises(IndexError):
        make("din")(bad_seq)
