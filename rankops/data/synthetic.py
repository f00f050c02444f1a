"""Synthetic click data with planted structure: the built-in default data set.

Each of ``num_fields`` categorical fields draws ids from a Zipf-like distribution over its
vocabulary. The true click probability is a factorization machine over hidden per-id vectors:
``p = sigmoid(bias + sum_f w[id_f] + sum_{i<j} <v[id_i], v[id_j]>)``. A model that learns pairwise
interactions can approach the planted model's own AUC (reported as ``oracle_auc``); one that
cannot stays well below it, so the data tells interaction layers apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rankops.data.dataset import InMemoryDataset
from rankops.data.schema import Schema


@dataclass
class SyntheticCTR:
    ids: torch.Tensor  # [N, F] int64, ids local to each field
    labels: torch.Tensor  # [N] float32 in {0, 1}
    probs: torch.Tensor  # [N] the planted click probability
    vocab_sizes: list[int]

    @property
    def num_fields(self) -> int:
        return self.ids.shape[1]

    def split(self, frac: float = 0.8) -> tuple["SyntheticCTR", "SyntheticCTR"]:
        n = int(len(self.labels) * frac)
        cut = lambda s: SyntheticCTR(self.ids[s], self.labels[s], self.probs[s], self.vocab_sizes)  # noqa: E731
        return cut(slice(0, n)), cut(slice(n, None))


def make_ctr(
    num_samples: int = 200_000,
    num_fields: int = 16,
    vocab_size: int = 1000,
    latent_dim: int = 4,
    interaction_scale: float = 1.0,
    seed: int = 0,
) -> SyntheticCTR:
    if num_samples < 1 or num_fields < 2 or vocab_size < 2 or latent_dim < 1:
        raise ValueError("make_ctr: need num_samples >= 1, num_fields >= 2, vocab_size >= 2, latent_dim >= 1")
    g = torch.Generator().manual_seed(seed)
    # Zipf-like popularity: a few ids are frequent, most are rare, as in real logs.
    popularity = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64) ** 1.05
    ids = torch.multinomial(popularity, num_samples * num_fields, replacement=True, generator=g)
    ids = ids.view(num_samples, num_fields)
    w = 0.3 * torch.randn(num_fields, vocab_size, generator=g)
    v = interaction_scale * torch.randn(num_fields, vocab_size, latent_dim, generator=g) / (num_fields * latent_dim) ** 0.5
    fields = torch.arange(num_fields)
    lin = w[fields, ids].sum(1)
    emb = v[fields, ids]  # [N, F, k]
    s = emb.sum(1)
    pair = 0.5 * (s.square() - emb.square().sum(1)).sum(1)
    logit = -1.0 + lin + 2.0 * pair
    probs = torch.sigmoid(logit)
    labels = torch.bernoulli(probs, generator=g)
    return SyntheticCTR(ids, labels.float(), probs.float(), [vocab_size] * num_fields)


def random_batch(schema, batch_size: int, seed: int = 0, max_bag: int = 4) -> "Batch":
    """A batch of uniformly random features and labels that fits ``schema`` (for tests and
    benchmarks: no structure to learn). Multi-hot bags hold 0..max_bag ids, sequences 0..max_len."""
    from rankops.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    B = batch_size
    feats: dict[str, object] = {}
    for f in schema.dense:
        feats[f.name] = torch.randn(B, f.dim, generator=g)
    for f in schema.sparse:
        if f.multi_hot:
            lengths = torch.randint(0, max_bag + 1, (B,), generator=g)
            feats[f.name] = (torch.randint(0, f.vocab_size, (int(lengths.sum()),), generator=g), lengths)
        else:
            feats[f.name] = torch.randint(0, f.vocab_size, (B,), generator=g)
    for s in schema.sequences:
        vocab = schema.feature(s.target).vocab_size
        lengths = torch.randint(0, s.max_len + 1, (B,), generator=g)
        shape = (B, s.max_len) if s.item_len is None else (B, s.max_len, s.item_len)  # lists of ids per position
        feats[s.name] = (torch.randint(0, vocab, shape, generator=g), lengths)
    labels = torch.empty(B, schema.num_tasks)
    for t, task in enumerate(schema.tasks):
        labels[:, t] = (torch.rand(B, generator=g) < 0.3).float() if task.kind == "binary" else torch.randn(B, generator=g)
    return Batch.from_features(schema, feats, labels)



# =============================================================================================
# Planted data sets: one generator per kind of signal. Each returns an InMemoryDataset (its schema
# in ``.schema``) whose ``extra`` holds the planted probability of every task (``prob/<task>``) and,
# where a quantity is planted but not observed (the funnel's conversion on every impression), its
# probability and counterfactual label (``prob/cvr``, ``label/cvr``). ``ceiling(data)`` is the planted
# model's own AUC: what a model that recovered the generator exactly would score on that data.
#
# Every generator draws its random numbers in one fixed order whatever the scales, so a set made
# with a signal's scale at 0 has the same ids and the same label noise: comparing ceilings across
# scales isolates what that signal contributes.


def _fields_schema(num_fields: int, vocab_size: int, embedding_dim: int, prefix: str = "f") -> list[dict]:
    return [{"name": f"{prefix}{i}", "vocab_size": vocab_size, "embedding_dim": embedding_dim}
            for i in range(num_fields)]


def _draw(g: torch.Generator, logits: dict[str, torch.Tensor], noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Labels ``[N, T]`` (task order of ``logits``) from the probabilities and the shared uniform noise."""
    probs = {k: torch.sigmoid(v.double()).float() for k, v in logits.items()}
    labels = torch.stack([(noise[:, t] < p).float() for t, p in enumerate(probs.values())], 1)
    return labels, {f"prob/{k}": p for k, p in probs.items()}


def _scaled_normal(g: torch.Generator, shape, std: float) -> torch.Tensor:
    return std * torch.randn(*shape, generator=g, dtype=torch.float64)


def _click_fields(g: torch.Generator, logit: torch.Tensor, noise: torch.Tensor, ids: torch.Tensor, vocab_size: int,
                  embedding_dim: int) -> InMemoryDataset:
    """A one-task click data set over the categorical fields ``ids [N, F]`` with planted ``logit``."""
    labels, extra = _draw(g, {"click": logit}, noise)
    F = ids.shape[1]
    schema = Schema(sparse=_fields_schema(F, vocab_size, embedding_dim), tasks=[{"name": "click"}])
    return InMemoryDataset(schema, torch.zeros(ids.shape[0], 0), {f"f{i}": ids[:, i] for i in range(F)},
                           labels=labels, extra=extra)


def make_pairwise(num_samples: int = 100_000, num_fields: int = 8, vocab_size: int = 50, latent_dim: int = 4,
                  pair_std: float = 1.5, first_order_std: float = 0.3, interaction_scale: float = 1.0,
                  embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Pairwise interactions: a factorization machine is the planted model.

    ``logit = b + sum_f w_f[id_f] + scale * sum_{i<j} <v_i[id_i], v_j[id_j]>`` over ``num_fields``
    uniform categorical fields, with ``v`` of ``latent_dim`` scaled so that the pairwise term has
    standard deviation ``pair_std`` (the first-order term: ``first_order_std`` per field).
    The pairwise term is zero-mean given any single field's id, so a first-order model (LR) sees
    none of it; FM and DeepFM hold it exactly (for ``embedding_dim >= latent_dim``).
    One task, ``click``.
    """
    if num_fields < 2 or vocab_size < 2 or latent_dim < 1 or num_samples < 1:
        raise ValueError("make_pairwise: need num_samples >= 1, num_fields >= 2, vocab_size >= 2, latent_dim >= 1")
    g = torch.Generator().manual_seed(seed)
    F, V, k = num_fields, vocab_size, latent_dim
    ids = torch.randint(0, V, (num_samples, F), generator=g)
    w = _scaled_normal(g, (F, V), first_order_std)
    pairs = F * (F - 1) // 2
    # each <v_i, v_j> has variance k * sigma^4; `pairs` independent ones: std = sigma^2 sqrt(k pairs)
    sigma = (pair_std / math.sqrt(k * pairs)) ** 0.5
    v = _scaled_normal(g, (F, V, k), sigma)
    v = v - v.mean(1, keepdim=True)  # no first-order leak: the mean over a field's ids is zero
    noise = torch.rand(num_samples, 1, generator=g)
    fields = torch.arange(F)
    e = v[fields, ids]  # [N, F, k]
    pair = 0.5 * (e.sum(1).square() - e.square().sum(1)).sum(1)
    logit = -0.5 + w[fields, ids].sum(1) + interaction_scale * pair
    return _click_fields(g, logit, noise, ids, V, embedding_dim)


def make_crosses(num_samples: int = 100_000, num_fields: int = 6, vocab_size: int = 20, latent_dim: int = 4,
                 cross_std: float = 2.0, first_order_std: float = 0.3, cross_scale: float = 1.0,
                 embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Higher-order (third-order) crosses, element-wise over a latent vector per id.

    ``logit = b + sum_f w_f[id_f] + scale * sum_{i<j<k} sum_d v_i[id_i,d] v_j[id_j,d] v_k[id_k,d]``
    (the element-wise triple products a CIN's second layer and a two-layer cross network compute
    in one step), scaled to standard deviation ``cross_std``. The latent tables are centred over
    each field's ids, so the third-order term is zero-mean given any one or any two fields' ids: it
    holds no first-order or pairwise part that LR, FM or the easy part of a DNN could take.
    One task, ``click``.
    """
    if num_fields < 3 or vocab_size < 2 or latent_dim < 1 or num_samples < 1:
        raise ValueError("make_crosses: need num_samples >= 1, num_fields >= 3, vocab_size >= 2, latent_dim >= 1")
    g = torch.Generator().manual_seed(seed)
    F, V, k = num_fields, vocab_size, latent_dim
    ids = torch.randint(0, V, (num_samples, F), generator=g)
    w = _scaled_normal(g, (F, V), first_order_std)
    triples = F * (F - 1) * (F - 2) // 6
    sigma = (cross_std / math.sqrt(k * triples)) ** (1 / 3)
    v = _scaled_normal(g, (F, V, k), sigma)
    v = v - v.mean(1, keepdim=True)
    noise = torch.rand(num_samples, 1, generator=g)
    fields = torch.arange(F)
    e = v[fields, ids]  # [N, F, k]
    p1, p2, p3 = e.sum(1), e.square().sum(1), e.pow(3).sum(1)
    triple = ((p1.pow(3) - 3 * p1 * p2 + 2 * p3) / 6).sum(1)  # the elementary symmetric polynomial e3, per d
    logit = -0.5 + w[fields, ids].sum(1) + cross_scale * triple
    return _click_fields(g, logit, noise, ids, V, embedding_dim)


def make_sequence(num_samples: int = 100_000, num_categories: int = 20, max_len: int = 20, min_len: int = 2,
                  num_context: int = 20, affinity: float = 3.0, first_order_std: float = 0.3,
                  affinity_scale: float = 1.0, embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Target-to-sequence affinity: the click depends on what the user's history says about the
    candidate's category.

    An id is an event ``2 * category + liked`` (``num_categories`` categories, liked or not: a
    vocabulary of ``2 * num_categories``). Each sample has a candidate ``item`` (an id: its category
    is ``item // 2``), a context id ``ctx`` and a behaviour sequence ``hist_item`` of
    ``min_len..max_len`` uniform events. With ``pref`` the mean of +1 (liked) / -1 (not) over the
    history events of the candidate's category (0 when there are none):
    ``logit = b + w_item[item] + w_ctx[ctx] + scale * affinity * pref``.
    The signal lives in the few history items that match the candidate; the mean of all history
    embeddings blends every category together (``2 * num_categories`` ids in ``embedding_dim``
    numbers, over sequences of different lengths) and cannot isolate them, while target attention
    (DIN, BST) scores each history item against the candidate. One task, ``click``; ``extra`` also
    holds ``matches``, the number of history events of the candidate's category.
    """
    if not (1 <= min_len <= max_len) or num_categories < 2 or num_context < 1 or num_samples < 1:
        raise ValueError("make_sequence: need 1 <= min_len <= max_len, num_categories >= 2, num_context >= 1, "
                         "num_samples >= 1")
    g = torch.Generator().manual_seed(seed)
    N, L, V = num_samples, max_len, 2 * num_categories
    item = torch.randint(0, V, (N,), generator=g)
    ctx = torch.randint(0, num_context, (N,), generator=g)
    hist = torch.randint(0, V, (N, L), generator=g)
    lengths = torch.randint(min_len, max_len + 1, (N,), generator=g)
    w_item = _scaled_normal(g, (V,), first_order_std)
    w_ctx = _scaled_normal(g, (num_context,), first_order_std)
    noise = torch.rand(N, 1, generator=g)
    valid = torch.arange(L)[None, :] < lengths[:, None]
    hist = torch.where(valid, hist, torch.zeros_like(hist))  # padding is id 0, past each length
    match = ((hist // 2) == (item // 2)[:, None]) & valid
    liked = (hist % 2) * 2 - 1
    pref = (match * liked).sum(1).double() / match.sum(1).clamp(min=1)
    logit = -0.8 + w_item[item] + w_ctx[ctx] + affinity_scale * affinity * pref
    labels, extra = _draw(g, {"click": logit}, noise)
    extra["matches"] = match.sum(1)
    schema = Schema(sparse=[{"name": "item", "vocab_size": V, "embedding_dim": embedding_dim},
                            {"name": "ctx", "vocab_size": num_context, "embedding_dim": embedding_dim}],
                    sequences=[{"name": "hist_item", "target": "item", "max_len": max_len}],
                    tasks=[{"name": "click"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), {"item": item, "ctx": ctx},
                           sequences={"hist_item": (hist, lengths)}, labels=labels, extra=extra)


def make_multitask(num_samples: int = 100_000, num_fields: int = 8, vocab_size: int = 50, latent_dim: int = 4,
                   num_hinges: int = 16, signal_std: float = 2.0, task_correlation: float = 0.0,
                   embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Two tasks with conflicting signals: each task's logit is a different piecewise-linear function
    of a latent of its own, so a representation that serves both must hold both.

    Per task ``t``: a latent ``y_t = sum_f b_t,f[id_f]`` of ``latent_dim`` numbers, and
    ``logit_t = b + signal_std * standardise(sum_j s_tj * relu(p_tj . y_t + c_tj))`` over
    ``num_hinges`` random hinges (random directions ``p``, offsets ``c``, signs ``s``): a one-hidden-
    layer ReLU network, which needs ``num_hinges`` hidden units to hold exactly. Task b's latents are
    ``b_b = rho b_a + sqrt(1 - rho^2) b'`` with independent hinges; at the default
    ``task_correlation`` rho = 0 the tasks share nothing, each pulling a shared layer its own way.
    With a shared bottom and experts of the same width W (``num_hinges <= W < 2 num_hinges``), the
    shared bottom cannot hold both tasks' hinges, while MMoE / PLE give each task a mixture of
    experts of its own. Tasks ``a`` and ``b``.
    """
    if (num_fields < 1 or vocab_size < 2 or latent_dim < 1 or num_hinges < 1 or num_samples < 2
            or not -1 <= task_correlation <= 1):
        raise ValueError("make_multitask: need num_samples >= 2, num_fields >= 1, vocab_size >= 2, latent_dim >= 1, "
                         "num_hinges >= 1, -1 <= task_correlation <= 1")
    g = torch.Generator().manual_seed(seed)
    F, V, m, K = num_fields, vocab_size, latent_dim, num_hinges
    ids = torch.randint(0, V, (num_samples, F), generator=g)
    b = _scaled_normal(g, (2, F, V, m), 1 / math.sqrt(F))
    b[1] = task_correlation * b[0] + math.sqrt(1 - task_correlation ** 2) * b[1]
    p = _scaled_normal(g, (2, m, K), 1 / math.sqrt(m))
    c = _scaled_normal(g, (2, K), 0.5)
    s = torch.where(torch.rand(2, K, generator=g) < 0.5, -1.0, 1.0).double()
    noise = torch.rand(num_samples, 2, generator=g)
    y = b[:, torch.arange(F), ids].sum(2)  # [2, N, m]
    h = (torch.relu(torch.einsum("tnm,tmk->tnk", y, p) + c[:, None]) * s[:, None]).sum(-1)  # [2, N]
    h = (h - h.mean(1, keepdim=True)) / h.std(1, keepdim=True)
    labels, extra = _draw(g, {"a": -0.5 + signal_std * h[0], "b": -0.5 + signal_std * h[1]}, noise)
    schema = Schema(sparse=_fields_schema(F, V, embedding_dim), tasks=[{"name": "a"}, {"name": "b"}])
    return InMemoryDataset(schema, torch.zeros(num_samples, 0), {f"f{i}": ids[:, i] for i in range(F)},
                           labels=labels, extra=extra)


def make_funnel(num_samples: int = 200_000, num_items: int = 1000, num_users: int = 100, num_context: int = 20,
                quality_std: float = 1.0, ctr_bias: float = -2.0, cvr_bias: float = -0.5, shared: float = 1.0,
                embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """A CTR -> CVR funnel: conversion is observed only after a click.

    Each item has a hidden quality ``q`` that raises both its click and its conversion rate; users
    and contexts add effects of their own (different ones for click and for conversion):
    ``logit_ctr = ctr_bias + q[item] + u[user] + x[ctx]``,
    ``logit_cvr = cvr_bias + shared * q[item] + u'[user] + r[item]`` (``r`` small, item-specific).
    A conversion happens on every impression with probability ``p_cvr`` (the counterfactual label,
    ``extra["label/cvr"]``, probability ``extra["prob/cvr"]``) but is *seen* only when the
    impression was clicked. Tasks ``click`` and ``ctcvr`` (click and convert), ESMM's two labels.
    A CVR model trained on clicked impressions only sees few (a click rate of about 0.15), biased
    ones: the low-quality items it must rank on the whole impression space are the ones it
    rarely sees. ESMM learns the items from every impression through the shared embeddings.
    ``clicked_only(data)`` gives that baseline's training set, ``impressions_cvr(data)`` the
    evaluation set (every impression, the counterfactual conversion label).
    """
    if num_items < 2 or num_users < 2 or num_context < 2 or num_samples < 1:
        raise ValueError("make_funnel: need num_samples >= 1 and at least 2 items, users and contexts")
    g = torch.Generator().manual_seed(seed)
    N = num_samples
    item = torch.randint(0, num_items, (N,), generator=g)
    user = torch.randint(0, num_users, (N,), generator=g)
    ctx = torch.randint(0, num_context, (N,), generator=g)
    q = _scaled_normal(g, (num_items,), quality_std)
    r = _scaled_normal(g, (num_items,), 0.3)
    u_ctr = _scaled_normal(g, (num_users,), 0.5)
    u_cvr = _scaled_normal(g, (num_users,), 0.5)
    x_ctr = _scaled_normal(g, (num_context,), 0.5)
    noise = torch.rand(N, 2, generator=g)
    logit_ctr = ctr_bias + q[item] + u_ctr[user] + x_ctr[ctx]
    logit_cvr = cvr_bias + shared * q[item] + u_cvr[user] + r[item]
    p_ctr = torch.sigmoid(logit_ctr).float()
    p_cvr = torch.sigmoid(logit_cvr).float()
    click = (noise[:, 0] < p_ctr).float()
    convert = (noise[:, 1] < p_cvr).float()  # on every impression; observed only where clicked
    labels = torch.stack([click, click * convert], 1)
    extra = {"prob/click": p_ctr, "prob/ctcvr": p_ctr * p_cvr, "prob/cvr": p_cvr, "label/cvr": convert}
    schema = Schema(sparse=[{"name": "item", "vocab_size": num_items, "embedding_dim": embedding_dim},
                            {"name": "user", "vocab_size": num_users, "embedding_dim": embedding_dim},
                            {"name": "ctx", "vocab_size": num_context, "embedding_dim": embedding_dim}],
                    tasks=[{"name": "click"}, {"name": "ctcvr"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), {"item": item, "user": user, "ctx": ctx}, labels=labels,
                           extra=extra)


def _relabel(data: InMemoryDataset, task: str, labels: torch.Tensor,
             rows: torch.Tensor | None = None) -> InMemoryDataset:
    """``data`` (or its ``rows``) with one task ``task`` whose labels are ``labels`` (the same rows)."""
    sub = data if rows is None else data.subset(rows)
    lab = labels if rows is None else labels[rows]
    d = data.schema.to_dict()
    schema = Schema.from_dict({**d, "tasks": [{"name": task}]})
    return InMemoryDataset(schema, sub.dense, sub.sparse, sub.sequences, lab.reshape(-1, 1).float(), sub.extra)


def clicked_only(data: InMemoryDataset) -> InMemoryDataset:
    """The funnel's clicked impressions, one task ``cvr`` labelled with the observed conversion: what
    a CVR model trained on clicks only learns from."""
    rows = torch.nonzero(data.labels[:, 0] > 0).flatten()
    return _relabel(data, "cvr", data.labels[:, 1], rows)


def impressions_cvr(data: InMemoryDataset) -> InMemoryDataset:
    """Every impression of the funnel, one task ``cvr`` labelled with the counterfactual conversion
    (would it have converted, had it been clicked): where CVR models are judged."""
    return _relabel(data, "cvr", data.extra["label/cvr"])


PLANTED = {"pairwise": make_pairwise, "crosses": make_crosses, "sequence": make_sequence,
           "multitask": make_multitask, "funnel": make_funnel}


def ceiling(data: InMemoryDataset) -> dict[str, float]:
    """The planted model's own AUC on ``data`` for every planted probability ``extra["prob/<name>"]``
    (against the task's labels, or ``extra["label/<name>"]`` for a quantity no task observes):
    ``{name: auc}``. No model can expect to beat it on that data."""
    from rankops.train.metrics import auc

    tasks = [t.name for t in data.schema.tasks]
    out = {}
    for key, p in data.extra.items():
        if not key.startswith("prob/"):
            continue
        name = key[len("prob/"):]
        if f"label/{name}" in data.extra:
            y = data.extra[f"label/{name}"]
        elif name in tasks:
            y = data.labels[:, tasks.index(name)]
        else:
            continue
        out[name] = auc(p, y)
    return out
