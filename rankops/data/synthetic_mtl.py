"""Planted data sets of the multi-task recipes (youtube, linkedin_feed, csrec, spotify, snapchat_ads,
taobao, kuaishou): one generator per kind of signal, in ``rankops.data.synthetic``'s conventions.

Each returns an ``InMemoryDataset`` whose ``extra["prob/<task>"]`` holds every binary task's
planted probability (``synthetic.ceiling`` turns them into the planted model's own AUC); a planted
quantity no task observes (true relevance) has ``extra["prob/<name>"]`` and ``extra["label/<name>"]``;
a regression task's planted mean is ``extra["mean/<task>"]`` (its noise variance is the least MSE
a model can expect). Random numbers are drawn in one fixed order whatever the scales, so a set made
with a signal's scale at 0 has the same ids and the same noise: comparing ceilings across scales
isolates what that signal contributes.
"""

from __future__ import annotations

import math

import torch

from rankops.data.dataset import InMemoryDataset
from rankops.data.schema import Schema
from rankops.data.synthetic import _draw, _fields_schema, _scaled_normal


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-12)


def _hinges(g: torch.Generator, y: torch.Tensor, num_hinges: int) -> torch.Tensor:
    """A random one-hidden-layer ReLU function of ``y [N, m]``, standardised: ``[N]``
    (``sum_j s_j relu(p_j . y + c_j)`` with random directions, offsets and signs)."""
    m = y.shape[1]
    p = _scaled_normal(g, (m, num_hinges), 1 / math.sqrt(m))
    c = _scaled_normal(g, (num_hinges,), 0.5)
    s = torch.where(torch.rand(num_hinges, generator=g) < 0.5, -1.0, 1.0).double()
    return _standardise((torch.relu(y @ p + c) * s).sum(1))


def _cross3(e: torch.Tensor) -> torch.Tensor:
    """``sum_{i<j<k} sum_d e_i,d e_j,d e_k,d`` over the fields of ``e [N, F, k]``: the elementary
    symmetric polynomial e3 per latent dimension, by Newton's identities."""
    p1, p2, p3 = e.sum(1), e.square().sum(1), e.pow(3).sum(1)
    return ((p1.pow(3) - 3 * p1 * p2 + 2 * p3) / 6).sum(1)


def make_position_bias(num_samples: int = 50_000, num_fields: int = 6, vocab_size: int = 50, num_positions: int = 10,
                       num_devices: int = 3, relevance_std: float = 1.5, decoy_std: float = 2.0,
                       position_bias: float = 1.0, embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Clicks that depend on true relevance AND on the position a logging policy showed the item at.

    Per sample, ``num_fields`` categorical context fields ``f*`` give the true relevance
    ``r = -0.5 + sum_f w_f[id_f]`` (std ``relevance_std``) and a decoy ``d = sum_f u_f[id_f]``
    (std ``decoy_std``, independent of ``r``). The logging policy ranked by ``r + d + eps``
    (``eps ~ N(0, 1)``): the top ``1 / num_positions`` of scores were shown at ``position`` 0, the
    next at 1, and so on; ``device`` is uniform. Then, with the position effect
    ``b(p, dev) = -position_bias * slope[dev] * log2(1 + p)`` (slopes 1, 1.5, 0.6, ... per device):

        click:      logit = r + b(position, device)
        like:       logit = -1.5 + s + 0.5 b(position, device),  s = standardise(r) / 2 + v  (v a
                    first-order term of its own, std 0.8): satisfaction
        watch_time: regression, standardise(s) + N(0, 0.5^2)

    A model that does not see position learns ``E[b | r + d]``, which rises with the decoy: it
    ranks by ``r + d`` partly and so worse by true relevance. One whose bias tower reads position
    and device explains ``b`` there and keeps ``r`` for the main model. ``extra["prob/relevance"]``
    = sigmoid(r) and ``extra["label/relevance"]`` (a draw from it) are the unbiased truth; at
    ``position_bias=0`` the click is the relevance (the same probabilities). Tasks ``click``,
    ``watch_time``, ``like``; sparse features ``f0..``, ``position``, ``device``.
    """
    if num_fields < 1 or vocab_size < 2 or num_positions < 2 or num_devices < 1 or num_samples < num_positions:
        raise ValueError("make_position_bias: need num_fields >= 1, vocab_size >= 2, num_positions >= 2, "
                         "num_devices >= 1, num_samples >= num_positions")
    g = torch.Generator().manual_seed(seed)
    N, F, V = num_samples, num_fields, vocab_size
    ids = torch.randint(0, V, (N, F), generator=g)
    device = torch.randint(0, num_devices, (N,), generator=g)
    w = _scaled_normal(g, (F, V), relevance_std / math.sqrt(F))
    u = _scaled_normal(g, (F, V), decoy_std / math.sqrt(F))
    v = _scaled_normal(g, (F, V), 0.8 / math.sqrt(F))
    eps = torch.randn(N, generator=g, dtype=torch.float64)
    noise = torch.rand(N, 3, generator=g)  # click, like, relevance
    wt_noise = 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    fields = torch.arange(F)
    r = -0.5 + w[fields, ids].sum(1)
    d = u[fields, ids].sum(1)
    score = r + d + eps
    rank = torch.empty(N, dtype=torch.int64)
    rank[torch.argsort(score, descending=True)] = torch.arange(N)
    position = rank * num_positions // N
    slopes = torch.tensor([1.0, 1.5, 0.6] * (num_devices // 3 + 1), dtype=torch.float64)[:num_devices]
    b = -position_bias * slopes[device] * torch.log2(1.0 + position.double())
    s = _standardise(r) / 2 + v[fields, ids].sum(1)
    watch_time = (_standardise(s) + wt_noise).float()
    labels, extra = _draw(g, {"click": r + b, "like": -1.5 + s + 0.5 * b, "relevance": r}, noise)
    extra["label/relevance"] = labels[:, 2]
    extra["mean/watch_time"] = _standardise(s).float()
    extra["position"] = position
    labels = torch.stack([labels[:, 0], watch_time, labels[:, 1]], 1)
    sparse = {f"f{i}": ids[:, i] for i in range(F)}
    sparse.update(position=position, device=device)
    schema = Schema(sparse=_fields_schema(F, V, embedding_dim)
                    + [{"name": "position", "vocab_size": num_positions, "embedding_dim": embedding_dim},
                       {"name": "device", "vocab_size": num_devices, "embedding_dim": embedding_dim}],
                    tasks=[{"name": "click"}, {"name": "watch_time", "kind": "regression"}, {"name": "like"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), sparse, labels=labels, extra=extra)


def make_shared_interest(num_samples: int = 20_000, num_fields: int = 8, vocab_size: int = 300,
                         interest_std: float = 1.5, own_std: float = 0.5, share_bias: float = -3.5,
                         shared_scale: float = 1.0, embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Three feed objectives driven by one latent interest: a common click, a rare share and a
    dwell time (regression), the mix of heads a feed's multi-task ranker trains.

    The interest is one weight per id of every field (``z = sum_f q_f[id_f]``, standardised to std
    ``interest_std``: ``num_fields * vocab_size`` weights to learn); each task adds a first-order
    term of its own (``o_t``, std ``own_std``):

        click: logit = -0.5 + shared_scale * z + o_click
        share: logit = share_bias + shared_scale * 1.2 z + o_share      (rare: about 7% positive)
        dwell: regression, shared_scale * 0.8 z + o_dwell + N(0, 0.5^2)

    The rare task alone has few positives to learn every id's interest from; trained with the
    others it reads the interest they learn. Tasks ``click``, ``share``, ``dwell``
    (``extra["mean/dwell"]``: the planted mean, so 0.25 is the least MSE to expect).
    """
    if num_fields < 1 or vocab_size < 2 or num_samples < 2:
        raise ValueError("make_shared_interest: need num_samples >= 2, num_fields >= 1, vocab_size >= 2")
    g = torch.Generator().manual_seed(seed)
    N, F, V = num_samples, num_fields, vocab_size
    ids = torch.randint(0, V, (N, F), generator=g)
    q = _scaled_normal(g, (F, V), 1.0)
    o = _scaled_normal(g, (3, F, V), own_std / math.sqrt(F))
    noise = torch.rand(N, 2, generator=g)
    dwell_noise = 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    fields = torch.arange(F)
    z = interest_std * _standardise(q[fields, ids].sum(1))
    own = o[:, fields, ids].sum(2)  # [3, N]
    labels, extra = _draw(g, {"click": -0.5 + shared_scale * z + own[0],
                              "share": share_bias + shared_scale * 1.2 * z + own[1]}, noise)
    dwell_mean = shared_scale * 0.8 * z + own[2]
    extra["mean/dwell"] = dwell_mean.float()
    labels = torch.cat([labels, (dwell_mean + dwell_noise).float()[:, None]], 1)
    schema = Schema(sparse=_fields_schema(F, V, embedding_dim),
                    tasks=[{"name": "click"}, {"name": "share"}, {"name": "dwell", "kind": "regression"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), {f"f{i}": ids[:, i] for i in range(F)}, labels=labels,
                           extra=extra)


def make_dense_vectors(num_samples: int = 30_000, num_items: int = 5000, num_users: int = 100, vector_dim: int = 32,
                       latent_dim: int = 4, num_hinges: int = 8, signal_std: float = 2.0, vector_noise: float = 0.3,
                       vector_scale: float = 1.0, embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Precomputed content vectors carry the signal (items too many and too rare to learn by id).

    Each of ``num_items`` items has a hidden latent ``z [latent_dim]`` and a precomputed vector
    ``item_vec = A z + noise`` of ``vector_dim`` numbers (a graph / content embedding: a noisy
    linear image of what the item is; ``vector_noise`` per coordinate). Samples draw an item and a
    user uniformly (an item is seen ``num_samples / num_items`` times: its id holds little), and
    each task is a different ReLU function of the item latent plus a user effect:

        stream: logit = -0.5 + vector_scale * signal_std * h_stream(z) + u_stream[user]
        save:   logit = -1.0 + vector_scale * signal_std * h_save(z)   + u_save[user]

    (``h_t``: ``num_hinges`` random hinges, standardised). A model reading ``item_vec`` (a dense
    feature of ``vector_dim``) can learn ``h_t`` for items it never saw; one reading ids only
    cannot. Tasks ``stream``, ``save``; dense ``item_vec``, sparse ``item``, ``user``.
    ``without_dense(data, ["item_vec"])`` is the same data without the vectors.
    """
    if num_items < 2 or num_users < 2 or vector_dim < 1 or latent_dim < 1 or num_hinges < 1 or num_samples < 2:
        raise ValueError("make_dense_vectors: need num_samples >= 2, num_items >= 2, num_users >= 2, "
                         "vector_dim, latent_dim, num_hinges >= 1")
    g = torch.Generator().manual_seed(seed)
    N = num_samples
    item = torch.randint(0, num_items, (N,), generator=g)
    user = torch.randint(0, num_users, (N,), generator=g)
    z = _scaled_normal(g, (num_items, latent_dim), 1.0)
    A = _scaled_normal(g, (latent_dim, vector_dim), 1 / math.sqrt(latent_dim))
    vec = z @ A + _scaled_normal(g, (num_items, vector_dim), vector_noise)
    u = _scaled_normal(g, (2, num_users), 0.5)
    noise = torch.rand(N, 2, generator=g)
    h = torch.stack([_hinges(g, z, num_hinges), _hinges(g, z, num_hinges)])  # [2, items]
    k = vector_scale * signal_std
    labels, extra = _draw(g, {"stream": -0.5 + k * h[0][item] + u[0][user],
                              "save": -1.0 + k * h[1][item] + u[1][user]}, noise)
    schema = Schema(dense=[{"name": "item_vec", "dim": vector_dim}],
                    sparse=[{"name": "item", "vocab_size": num_items, "embedding_dim": embedding_dim},
                            {"name": "user", "vocab_size": num_users, "embedding_dim": embedding_dim}],
                    tasks=[{"name": "stream"}, {"name": "save"}])
    return InMemoryDataset(schema, vec[item].float(), {"item": item, "user": user}, labels=labels, extra=extra)


def make_crossed_tasks(num_samples: int = 50_000, num_fields: int = 5, vocab_size: int = 10, latent_dim: int = 2,
                       cross_std: float = 2.0, first_order_std: float = 0.3, cross_scale: float = 1.0,
                       task_correlation: float = 0.9, b_bias: float = -3.5, embedding_dim: int = 8,
                       seed: int = 0) -> InMemoryDataset:
    """Two tasks, each a third-order cross of its own (conflicting crosses: DCN-V2 + PLE's data).

    Per task t: ``logit_t = c_t + sum_f w_t,f[id_f] + cross_scale * sum_{i<j<k} sum_d
    v_t,i[id_i,d] v_t,j[id_j,d] v_t,k[id_k,d]`` (``synthetic.make_crosses``'s term, std
    ``cross_std``, latent tables centred over each field's ids so the cross is invisible to any one
    or two fields). Task b's latent tables are ``rho v_a + sqrt(1 - rho^2) v'`` (``task_correlation``
    rho: the crosses share that much and conflict in the rest; at 0 they share nothing and pull a
    shared representation two ways). ``c_a = -0.5``; ``c_b = b_bias``: task b is the rarer
    objective (a conversion beside a click), with fewer positives to learn its crosses from alone.
    Tasks ``a``, ``b``.
    """
    if num_fields < 3 or vocab_size < 2 or latent_dim < 1 or num_samples < 1 or not -1 <= task_correlation <= 1:
        raise ValueError("make_crossed_tasks: need num_samples >= 1, num_fields >= 3, vocab_size >= 2, "
                         "latent_dim >= 1, -1 <= task_correlation <= 1")
    g = torch.Generator().manual_seed(seed)
    N, F, V, k = num_samples, num_fields, vocab_size, latent_dim
    ids = torch.randint(0, V, (N, F), generator=g)
    w = _scaled_normal(g, (2, F, V), first_order_std)
    triples = F * (F - 1) * (F - 2) // 6
    sigma = (cross_std / math.sqrt(k * triples)) ** (1 / 3)
    v = _scaled_normal(g, (2, F, V, k), 1.0)
    v[1] = task_correlation * v[0] + math.sqrt(1 - task_correlation ** 2) * v[1]
    v = sigma * (v - v.mean(2, keepdim=True))
    noise = torch.rand(N, 2, generator=g)
    fields = torch.arange(F)
    logits = {t: c + w[i, fields, ids].sum(1) + cross_scale * _cross3(v[i, fields, ids])
              for i, (t, c) in enumerate(zip("ab", (-0.5, b_bias)))}
    labels, extra = _draw(g, logits, noise)
    schema = Schema(sparse=_fields_schema(F, V, embedding_dim), tasks=[{"name": "a"}, {"name": "b"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), {f"f{i}": ids[:, i] for i in range(F)}, labels=labels,
                           extra=extra)


def make_sequence_tasks(num_samples: int = 30_000, num_categories: int = 10, max_len: int = 20, min_len: int = 2,
                        num_context: int = 20, affinity: float = 2.5, first_order_std: float = 0.3,
                        affinity_scale: float = 1.0, embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Target-to-sequence affinity in two tasks, through different parts of the history.

    An id is an event ``4 * category + 2 * liked + bought`` (a vocabulary of ``4 * num_categories``).
    Each sample has a candidate ``item`` (its category: ``item // 4``), a context id ``ctx`` and a
    behaviour sequence ``hist_item`` of ``min_len..max_len`` uniform events. Over the history
    events of the candidate's category (0 when there are none), ``pref_like`` is the mean of +1
    (liked) / -1 (not) and ``pref_buy`` that of +1 (bought) / -1:

        click: logit = -0.8 + w_item[item] + w_ctx[ctx] + affinity_scale * affinity * pref_like
        buy:   logit = -1.5 + w'_item[item] + affinity_scale * affinity * pref_buy

    Both signals live in the few history events that match the candidate, which target attention
    picks out and a mean over the whole history blurs (``synthetic.make_sequence``, twice). Tasks
    ``click``, ``buy``; ``extra["matches"]``: the matching events per sample.
    """
    if not (1 <= min_len <= max_len) or num_categories < 2 or num_context < 1 or num_samples < 1:
        raise ValueError("make_sequence_tasks: need 1 <= min_len <= max_len, num_categories >= 2, num_context >= 1, "
                         "num_samples >= 1")
    g = torch.Generator().manual_seed(seed)
    N, L, V = num_samples, max_len, 4 * num_categories
    item = torch.randint(0, V, (N,), generator=g)
    ctx = torch.randint(0, num_context, (N,), generator=g)
    hist = torch.randint(0, V, (N, L), generator=g)
    lengths = torch.randint(min_len, max_len + 1, (N,), generator=g)
    w_item = _scaled_normal(g, (2, V), first_order_std)
    w_ctx = _scaled_normal(g, (num_context,), first_order_std)
    noise = torch.rand(N, 2, generator=g)
    valid = torch.arange(L)[None, :] < lengths[:, None]
    hist = torch.where(valid, hist, torch.zeros_like(hist))
    match = ((hist // 4) == (item // 4)[:, None]) & valid
    n = match.sum(1).clamp(min=1).double()
    pref_like = (match * ((hist // 2) % 2 * 2 - 1)).sum(1).double() / n
    pref_buy = (match * (hist % 2 * 2 - 1)).sum(1).double() / n
    a = affinity_scale * affinity
    labels, extra = _draw(g, {"click": -0.8 + w_item[0][item] + w_ctx[ctx] + a * pref_like,
                              "buy": -1.5 + w_item[1][item] + a * pref_buy}, noise)
    extra["matches"] = match.sum(1)
    schema = Schema(sparse=[{"name": "item", "vocab_size": V, "embedding_dim": embedding_dim},
                            {"name": "ctx", "vocab_size": num_context, "embedding_dim": embedding_dim}],
                    sequences=[{"name": "hist_item", "target": "item", "max_len": max_len}],
                    tasks=[{"name": "click"}, {"name": "buy"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), {"item": item, "ctx": ctx},
                           sequences={"hist_item": (hist, lengths)}, labels=labels, extra=extra)


def make_sinusoid_tasks(num_samples: int = 100_000, dense_dim: int = 32, num_directions: int = 6, num_sines: int = 10,
                        frequency: float = 3.0, task_correlation: float = 0.0, signal_std: float = 2.0,
                        sine_scale: float = 1.0, num_fields: int = 2, vocab_size: int = 20,
                        first_order_std: float = 0.3, embedding_dim: int = 8, seed: int = 0) -> InMemoryDataset:
    """Two tasks of controlled correlation on the same dense features: the MMoE paper's synthetic
    (Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts,
    KDD 2018, section 4), with ``num_directions`` ridge directions per task instead of one.

    ``x ~ N(0, I_d)`` (``d = dense_dim``, the dense feature ``x``). Orthonormal directions
    ``u_1..u_r, u'_1..u'_r`` (``r = num_directions``, a QR of a Gaussian matrix) give task a's
    ``w_a,j = u_j`` and task b's ``w_b,j = rho u_j + sqrt(1 - rho^2) u'_j``, so
    ``cos(w_a,j, w_b,j) = rho`` (``task_correlation``). With ``z_t,j = w_t,j . x``:

        y_t     = sum_j [ z_t,j + sine_scale * sum_i sin(alpha_i z_t,j + beta_i) ]
        logit_t = signal_std * standardise(y_t) + sum_f o_t,f[id_f]

    (``alpha_i = frequency * linspace(0.25, 1, num_sines)``, fixed so every seed is as hard;
    ``beta_i ~ N(0, 1)``; ``o_t`` first-order effects of ``num_fields`` categorical context fields,
    std ``first_order_std``, one per task). At rho = 1 the tasks read the same ``r`` ridge functions;
    at rho = 0 they read ``2 r`` different ones from the same inputs, and a shared bottom of a given
    width must split its hidden units between them (a layer pulled two ways: negative transfer),
    where MMoE / PLE give each task its own mixture of experts of that width. At the defaults a
    bottom of (16, 8) holds one task's 6 ridge functions (at rho = 1 it matches MMoE) but not two
    tasks' 12 (bench/results/learning-*: ``multitask`` and ``multitask_rho1``). ``sine_scale=0``
    leaves the tasks linear in ``x``, which any width holds. Tasks ``a``, ``b``; dense ``x``,
    sparse ``f0..``.
    """
    if (dense_dim < 2 * num_directions or num_directions < 1 or num_sines < 0 or num_samples < 2 or num_fields < 1
            or vocab_size < 2 or not -1 <= task_correlation <= 1):
        raise ValueError("make_sinusoid_tasks: need num_samples >= 2, num_directions >= 1, "
                         "dense_dim >= 2 * num_directions, num_sines >= 0, num_fields >= 1, vocab_size >= 2, "
                         "-1 <= task_correlation <= 1")
    g = torch.Generator().manual_seed(seed)
    N, d, r, F = num_samples, dense_dim, num_directions, num_fields
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    ids = torch.randint(0, vocab_size, (N, F), generator=g)
    u, _ = torch.linalg.qr(torch.randn(d, 2 * r, generator=g, dtype=torch.float64))
    beta = _scaled_normal(g, (num_sines,), 1.0)
    o = _scaled_normal(g, (2, F, vocab_size), first_order_std / math.sqrt(F))
    noise = torch.rand(N, 2, generator=g)
    alpha = frequency * torch.linspace(0.25, 1.0, num_sines, dtype=torch.float64)
    w = {"a": u[:, :r], "b": task_correlation * u[:, :r] + math.sqrt(1 - task_correlation ** 2) * u[:, r:]}
    fields = torch.arange(F)
    logits = {}
    for i, (t, wt) in enumerate(w.items()):
        z = x @ wt  # [N, r]
        y = (z + sine_scale * torch.sin(alpha * z[..., None] + beta).sum(-1)).sum(1)
        logits[t] = signal_std * _standardise(y) + o[i, fields, ids].sum(1)
    labels, extra = _draw(g, logits, noise)
    schema = Schema(dense=[{"name": "x", "dim": d}], sparse=_fields_schema(F, vocab_size, embedding_dim),
                    tasks=[{"name": "a"}, {"name": "b"}])
    return InMemoryDataset(schema, x.float(), {f"f{i}": ids[:, i] for i in range(F)}, labels=labels, extra=extra)


def without_dense(data: InMemoryDataset, names: list[str]) -> InMemoryDataset:
    """``data`` without the dense features ``names`` (schema and columns): the same samples for a
    model that must do without them."""
    keep, at = [], 0
    for f in data.schema.dense:
        if f.name not in names:
            keep.extend(range(at, at + f.dim))
        at += f.dim
    missing = sorted(set(names) - {f.name for f in data.schema.dense})
    if missing:
        raise ValueError(f"without_dense: {missing} are not dense features of the data "
                         f"({[f.name for f in data.schema.dense]})")
    return InMemoryDataset(data.schema.subset(drop=names), data.dense[:, keep], data.sparse, data.sequences,
                           data.labels, data.extra)


PLANTED = {"position_bias": make_position_bias, "shared_interest": make_shared_interest,
           "dense_vectors": make_dense_vectors, "crossed_tasks": make_crossed_tasks,
           "sequence_tasks": make_sequence_tasks, "sinusoid_tasks": make_sinusoid_tasks}
