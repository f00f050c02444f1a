"""Planted data set of the monolith recipe: raw 64-bit ids from a long-tail distribution.

``long_tail``: users and items are raw 64-bit ids (random non-negative int64 values, one per
entity, as a production log carries them: no vocabulary, no dense index), drawn with Zipf
popularity, so a few ids are everywhere and most are seen a handful of times. Each id has an
effect of its own, first-order and in its crosses, so a table that gives two ids one row (the
hashing trick, ``id % rows``) mixes their effects, and a collisionless table does not.
"""

from __future__ import annotations

import math

import torch

from rankops.data.dataset import InMemoryDataset
from rankops.data.schema import Schema
from rankops.data.synthetic import _draw, _scaled_normal

RAW_ID_SPACE = 2 ** 63 - 1  # raw ids are in [0, 2**63 - 1): the vocab_size Batch.validate checks them against


def _raw_ids(g: torch.Generator, n: int) -> torch.Tensor:
    """``n`` distinct raw ids, uniform over [0, 2**63 - 1)."""
    ids = torch.randint(0, RAW_ID_SPACE, (n,), generator=g)
    if ids.unique().numel() != n:  # about n**2 / 2**64: never at these sizes, but never silently
        raise RuntimeError("make_long_tail: two entities drew one raw id; use another seed")
    return ids


def make_long_tail(num_samples: int = 50_000, num_users: int = 4_000, num_items: int = 1_000,
                   num_context: int = 16, zipf: float = 0.9, id_std: float = 1.0, cross_std: float = 1.0,
                   id_scale: float = 1.0, latent_dim: int = 4, embedding_dim: int = 8,
                   seed: int = 0) -> InMemoryDataset:
    """Long-tail raw ids whose per-id effects matter.

    ``user`` and ``item``: raw 64-bit ids of ``num_users`` / ``num_items`` entities with Zipf
    popularity ``p(rank r) ~ r**-zipf``; ``ctx``: a small categorical field of ``num_context`` ids.
    The click logit is

        ``-1 + id_scale * (w_u[user] + w_i[item] + <v_u[user], v_i[item]>) + w_c[ctx] + <v_i[item], v_c[ctx]>``

    with per-id first-order effects ``w ~ N(0, id_std)`` and ``latent_dim`` vectors scaled so each
    cross has standard deviation ``cross_std``. ``id_scale=0`` leaves only the context and the
    item x context cross (the same draws otherwise): the ceiling's drop is what the per-id effects
    carry. One task, ``click``; ``extra["prob/click"]`` the planted probability.

    Schema: ``user`` / ``item`` have ``vocab_size = 2**63 - 1``: their values are raw ids, to be
    remapped (``rankops.nn.CollisionlessIds``, or ``id % rows``) before any embedding table.
    """
    if num_samples < 1 or num_users < 2 or num_items < 2 or num_context < 2 or latent_dim < 1 or zipf <= 0:
        raise ValueError("make_long_tail: need num_samples >= 1, num_users, num_items, num_context >= 2, "
                         "latent_dim >= 1, zipf > 0")
    g = torch.Generator().manual_seed(seed)
    k = latent_dim
    user_ids, item_ids = _raw_ids(g, num_users), _raw_ids(g, num_items)

    def zipf_ranks(n: int) -> torch.Tensor:
        p = 1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** zipf
        return torch.multinomial(p, num_samples, replacement=True, generator=g)

    user, item = zipf_ranks(num_users), zipf_ranks(num_items)
    ctx = torch.randint(0, num_context, (num_samples,), generator=g)
    w_u, w_i = _scaled_normal(g, (num_users,), id_std), _scaled_normal(g, (num_items,), id_std)
    w_c = _scaled_normal(g, (num_context,), 0.3)
    sigma = (cross_std / math.sqrt(k)) ** 0.5  # <a, b> over k dims of N(0, sigma^2): std sigma^2 sqrt(k)
    v_u, v_i, v_c = (_scaled_normal(g, (n, k), sigma) for n in (num_users, num_items, num_context))
    noise = torch.rand(num_samples, 1, generator=g)
    per_id = w_u[user] + w_i[item] + (v_u[user] * v_i[item]).sum(1)
    logit = -1.0 + id_scale * per_id + w_c[ctx] + (v_i[item] * v_c[ctx]).sum(1)
    labels, extra = _draw(g, {"click": logit}, noise)
    schema = Schema(sparse=[{"name": "user", "vocab_size": RAW_ID_SPACE, "embedding_dim": embedding_dim},
                            {"name": "item", "vocab_size": RAW_ID_SPACE, "embedding_dim": embedding_dim},
                            {"name": "ctx", "vocab_size": num_context, "embedding_dim": embedding_dim}],
                    tasks=[{"name": "click"}])
    return InMemoryDataset(schema, torch.zeros(num_samples, 0),
                           {"user": user_ids[user], "item": item_ids[item], "ctx": ctx}, labels=labels, extra=extra)


PLANTED = {"long_tail": make_long_tail}
