"""The news and session recipes (mtrec, m2trec, plm_nr): each builds from its YAML on a small draw of
its planted set, trains a few steps through the one Trainer (the loss goes down), and gives equal
outputs and gradients under the reference backend and the fused default from the same weights; the
planted sets (rankops.data.synthetic_news) are deterministic per seed and their planted signal is
what lifts the ceiling; the schema's sequences of id lists round-trip and validate."""

import pytest
import torch

import rankops.models as zoo
from rankops.data import planted
from rankops.data.schema import Schema
from rankops.data.synthetic import ceiling
from rankops.data.synthetic_news import PLANTED
from rankops.models.base import RankingModel
from rankops.models.features import FeatureArch
from tests.recipes.common import (assert_training_lowers_loss, assert_yaml_and_module, build, fused_and_reference,
                                   planted_draw, recipe_yaml)

MINE = ("mtrec", "m2trec", "plm_nr")
SMALL_DATA = 1000  # rows of each recipe's planted draw


@pytest.fixture(scope="module", params=MINE)
def recipe(request):
    """(name, YAML config, a small draw of its planted set)."""
    cfg = recipe_yaml(request.param)
    return request.param, cfg, planted_draw(cfg, SMALL_DATA)


def test_every_recipe_has_its_yaml_and_module():
    assert_yaml_and_module(MINE)


def test_builds_and_trains_from_its_yaml(recipe):
    name, cfg, data = recipe
    model = build(cfg, data.schema)
    assert model.name == name
    assert_training_lowers_loss(model, data, float(cfg["lr"]) * 3, probe_rows=200, max_steps=15)


def test_fused_equals_reference(recipe):
    name, cfg, data = recipe
    model = build(cfg, data.schema)
    model.train()  # the training forward: mtrec's auxiliary loss is in the gradients
    batch = data.take(torch.arange(29))
    (out, grads), (ref_out, ref_grads) = fused_and_reference(model, batch)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    tables = [n for n in grads if "weights" in n]  # the EBC tables: the fused lookups' gradients
    assert tables
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=lambda s: f"{n}: {s}")


def test_mtrec_auxiliary_task_adds_to_the_loss():
    cfg = recipe_yaml("mtrec")
    data = planted.make("news_interest", num_samples=64, seed=0)
    batch = data.take(torch.arange(64))
    with_aux = build(cfg, data.schema).train()
    logits = with_aux(batch)
    main = RankingModel.loss(with_aux, logits, batch.labels)
    total = with_aux.loss(logits, batch.labels)
    assert total > main + 0.5  # the category cross-entropy over 12 classes starts near log 12
    assert with_aux.loss(logits, batch.labels) == main  # each forward's auxiliary term is used once
    with_aux.eval()
    assert with_aux.loss(with_aux(batch), batch.labels) == RankingModel.loss(with_aux, with_aux(batch), batch.labels)
    without = build(cfg, data.schema, aux_weight=0.0).train()
    out = without(batch)
    assert without.loss(out, batch.labels) == RankingModel.loss(without, out, batch.labels)


def test_m2trec_without_metadata_ignores_the_categories():
    cfg = recipe_yaml("m2trec")
    data = planted.make("cold_items", num_samples=40, seed=0)
    model = build(cfg, data.schema, metadata=[]).eval()
    batch = data.take(torch.arange(40))
    cats = data.sequences["session_category"][0]
    data.sparse["category"] = (data.sparse["category"] + 1) % data.schema.feature("category").vocab_size
    data.sequences["session_category"] = ((cats + 1) % 20, data.sequences["session_category"][1])
    changed = data.take(torch.arange(40))
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(changed))
        meta = build(cfg, data.schema).eval()
        assert not torch.allclose(meta(batch), meta(changed))


def test_recipe_schema_errors():
    no_titles = planted.make("cold_items", num_samples=10, seed=0).schema
    with pytest.raises(ValueError, match="token lists"):
        zoo.build("plm_nr", no_titles)
    news = planted.make("news_interest", num_samples=10, seed=0).schema
    with pytest.raises(ValueError, match="session sequence"):
        zoo.build("m2trec", news)
    with pytest.raises(ValueError, match="lacks"):
        zoo.build("mtrec", news.subset(drop=["category"]))
    with pytest.raises(ValueError, match="unknown options"):
        zoo.build("plm_nr", news, cross_num=2)
    with pytest.raises(ValueError, match="pooling must be one of"):
        zoo.build("plm_nr", news, user_pooling="max")


# ---------------------------------------------------------------------------------------------
# the planted sets and the schema's sequences of id lists

SIGNAL = {"news_interest": ("affinity_scale", ("click",)), "cold_items": ("affinity_scale", ("click", "cart"))}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_set_is_deterministic_per_seed(name):
    a, b, c = (PLANTED[name](num_samples=300, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.labels, b.labels)
    for k in a.sparse:
        x, y = a.sparse[k], b.sparse[k]
        assert all(torch.equal(u, v) for u, v in zip(x, y)) if isinstance(x, tuple) else torch.equal(x, y)
    assert all(torch.equal(a.sequences[k][0], b.sequences[k][0]) for k in a.sequences)
    assert all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)
    assert not torch.equal(a.labels, c.labels)
    a.take(torch.arange(300)).validate(a.schema)


@pytest.mark.parametrize("name", sorted(SIGNAL))
def test_planted_signal_lifts_the_ceiling(name):
    scale, tasks = SIGNAL[name]
    on, off = (ceiling(PLANTED[name](num_samples=4000, seed=0, **{scale: s})) for s in (1.0, 0.0))
    # cold_items lifts its ceilings by 0.10 +- 0.015 over seeds (news_interest by ~0.29): the bar sits well
    # below that, not at the mean (at 0.1 the test failed on torch 2.6, whose random draws differ), and
    # well above no signal (a lift of 0)
    for t in tasks:
        assert on[t] > off[t] + 0.05, (t, on[t], off[t])


def test_news_titles_carry_their_category():
    data = PLANTED["news_interest"](num_samples=500, num_categories=6, topic_words=5, topic_share=1.0, seed=0)
    values, offsets = data.sparse["title"]
    first = values[offsets[:-1]]  # every token is a topic word at topic_share 1
    torch.testing.assert_close((first - 1) // 5, data.sparse["category"])
    ids, lengths = data.sequences["hist_title"]
    assert ids.shape == (500, 8, 8)
    valid = torch.arange(8)[None, :] < lengths[:, None]
    assert (ids[~valid] == 0).all() and (ids[valid][:, 0] > 0).all()  # padding titles are all 0


def test_cold_items_are_rarely_seen():
    data = PLANTED["cold_items"](num_samples=6000, seed=0)
    cold = data.extra["cold"]
    counts = torch.bincount(data.sparse["item"], minlength=data.schema.feature("item").vocab_size)
    assert counts[data.sparse["item"][cold]].float().mean() < 2 < counts[data.sparse["item"][~cold]].float().mean()


def test_sequence_of_id_lists_in_the_schema_and_batch(tmp_path):
    schema = PLANTED["news_interest"](num_samples=20, seed=0).schema
    path = tmp_path / "s.yaml"
    schema.save(path)
    assert Schema.load(path).to_dict() == schema.to_dict()
    assert Schema.load(path).sequences[0].item_len == 8
    with pytest.raises(ValueError, match="must be a multi-hot"):
        Schema(sparse=[{"name": "t", "vocab_size": 5}], sequences=[{"name": "h", "target": "t", "item_len": 3}])
    with pytest.raises(ValueError, match="item_len >= 1"):
        Schema(sparse=[{"name": "t", "vocab_size": 5, "multi_hot": True}],
               sequences=[{"name": "h", "target": "t", "item_len": 0}])
    data = PLANTED["news_interest"](num_samples=20, seed=0)
    batch = data.take(torch.arange(20))
    ids, lengths = batch.sequences["hist_title"]
    batch.sequences["hist_title"] = (ids[:, :, :5], lengths)
    with pytest.raises(ValueError, match=r"\[B, L, 8\]"):
        batch.validate(schema)


def test_feature_arch_pools_each_listed_position_as_a_bag():
    data = PLANTED["news_interest"](num_samples=30, seed=0)
    arch = FeatureArch(data.schema)
    batch = data.take(torch.arange(30))
    seq = arch.sequence_embeddings(batch, "hist_title")  # [B, L, D]: each clicked title's mean token row
    ids, lengths = batch.sequences["hist_title"]
    table = arch.embeddings.table_weight("title")
    b, l = 3, 1
    toks = ids[b, l][ids[b, l] != 0]
    torch.testing.assert_close(seq[b, l], table[toks].mean(0))
    assert (seq[b, lengths[b]:] == 0).all()
    assert arch(batch).shape == (30, 3, 32)  # title, category, pooled history


def test_news_encoding_once_per_distinct_title_changes_nothing(monkeypatch):
    # eager forward encodes each distinct title of the batch once; under torch.compile / export
    # (static shapes) every title is encoded: the same logits either way
    cfg = recipe_yaml("plm_nr")
    data = planted.make("news_interest", num_samples=50, seed=0)
    model = build(cfg, data.schema, text_layers=1).eval()
    batch = data.take(torch.arange(50))
    with torch.no_grad():
        once = model(batch)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        every = model(batch)
    torch.testing.assert_close(once, every)
