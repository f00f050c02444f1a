"""Planted data sets of the news and session recipes (mtrec, m2trec, plm_nr), in
``rankops.data.synthetic``'s conventions: an ``InMemoryDataset`` whose ``extra["prob/<task>"]`` is
each task's planted probability (``synthetic.ceiling`` gives the planted model's own AUC), random
numbers drawn in one fixed order whatever the scales (a set made with a signal's scale at 0 has the
same items, histories and label noise).

How news is represented (MIND's layout, flattened into the batch): a news is its title, a list of
token ids (0 is padding), and a category. The candidate's title is a multi-hot sparse feature
``title`` (its tokens in order, DeepCTR-Torch's ``VarLenSparseFeat``), its category a one-hot
``category``; the user's clicked news are the sequence ``hist_title`` of token lists
(``SequenceFeature.item_len``: ids ``[B, L, item_len]``). Every batch then carries all a news
model reads, so ``rankops train`` and the checkpoints need nothing beside the schema (no
catalogue to ship with the model), and a plain zoo model can read the same data (the history's
titles pooled as bags of words).
"""

from __future__ import annotations

import torch

from rankops.data.dataset import InMemoryDataset
from rankops.data.schema import Schema
from rankops.data.synthetic import _draw, _scaled_normal


def _titles(g: torch.Generator, category: torch.Tensor, num_categories: int, vocab_size: int, topic_words: int,
            title_len: int, min_title: int, topic_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists ``[N, title_len]`` (0-padded after each title) and lengths ``[N]``: each token is
    one of the news's category's ``topic_words`` words with probability ``topic_share``, else a
    filler word shared by every category."""
    N = category.numel()
    first_filler = 1 + num_categories * topic_words
    lengths = torch.randint(min_title, title_len + 1, (N,), generator=g)
    topical = torch.rand(N, title_len, generator=g) < topic_share
    topic = 1 + category[:, None] * topic_words + torch.randint(0, topic_words, (N, title_len), generator=g)
    filler = torch.randint(first_filler, vocab_size, (N, title_len), generator=g)
    tokens = torch.where(topical, topic, filler)
    return torch.where(torch.arange(title_len)[None, :] < lengths[:, None], tokens, 0), lengths


def make_news_interest(num_samples: int = 20_000, num_news: int = 3000, num_categories: int = 12,
                       vocab_size: int = 1500, topic_words: int = 8, title_len: int = 8, min_title: int = 4,
                       topic_share: float = 0.6, max_hist: int = 8, min_hist: int = 3, generic_share: float = 0.45,
                       affinity: float = 4.0, affinity_scale: float = 1.0, embedding_dim: int = 32,
                       seed: int = 0) -> InMemoryDataset:
    """Clicks on news whose topic the user has read, behind clicks on generic news everyone reads.

    A catalogue of ``num_news`` news, each with a uniform category and a title of
    ``min_title..title_len`` tokens (vocabulary ``vocab_size``, 0 is padding): a token is one of its
    category's ``topic_words`` words with probability ``topic_share``, else a filler word. Category
    0 is generic (breaking news): every user reads it. Each user has two interest categories among
    ``1..C-1`` and a history of ``min_hist..max_hist`` clicked news: each is generic with the user's
    own probability ``g ~ U(0, min(2 * generic_share, 0.9))``, else from an interest category (90%)
    or a random topical one (10%). The candidate is from an interest category (40%) or any news
    (60%). With ``pref`` the share of the user's *topical* history in the candidate's category
    (generic candidates: 0.25, the base rate),

        click: logit = -1 + affinity_scale * affinity * (pref - 0.25).

    The signal is in the titles (the category is never an input of the recipes' click models:
    ``category`` is there for an auxiliary task and for baselines). Mean pooling of the history
    mixes the generic share ``g`` into the user vector (a dot-product score shrinks by ``1 - g``,
    which varies per user); attention pooling learns to ignore generic news. With few samples per
    title word, learning which words make a category from clicks alone is slow; the category label
    teaches it directly (MTRec's auxiliary task). Task ``click``; ``extra["generic"]`` is each
    user's generic share.
    """
    if (num_categories < 3 or topic_words < 1 or not 1 <= min_title <= title_len or not 1 <= min_hist <= max_hist
            or num_samples < 1 or num_news < num_categories or not 0 <= topic_share <= 1
            or vocab_size <= 1 + num_categories * topic_words or not 0 <= generic_share <= 0.5):
        raise ValueError("make_news_interest: need num_categories >= 3, topic_words >= 1, 1 <= min_title <= title_len, "
                         "1 <= min_hist <= max_hist, num_samples >= 1, num_news >= num_categories, "
                         "0 <= topic_share <= 1, 0 <= generic_share <= 0.5 and vocab_size > 1 + num_categories * "
                         "topic_words (filler words)")
    g = torch.Generator().manual_seed(seed)
    N, C, L = num_samples, num_categories, max_hist
    news_cat = torch.randint(0, C, (num_news,), generator=g)
    news_cat[:C] = torch.arange(C)  # every category has a news
    titles, title_lengths = _titles(g, news_cat, C, vocab_size, topic_words, title_len, min_title, topic_share)
    by_cat = [torch.nonzero(news_cat == c).flatten() for c in range(C)]
    counts = torch.tensor([b.numel() for b in by_cat])
    starts = torch.cumsum(counts, 0) - counts
    flat = torch.cat(by_cat)

    def pick(cat: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # a uniform news of each category
        return flat[starts[cat] + (u * counts[cat]).long().clamp(max=counts[cat] - 1)]

    interests = 1 + torch.multinomial(torch.ones(N, C - 1), 2, replacement=False, generator=g)  # [N, 2]
    generic = torch.rand(N, generator=g).double() * min(2 * generic_share, 0.9)
    lengths = torch.randint(min_hist, max_hist + 1, (N,), generator=g)
    u_kind, u_int, u_rand, u_news = (torch.rand(N, L, generator=g) for _ in range(4))
    rand_cat = 1 + (u_rand * (C - 1)).long().clamp(max=C - 2)
    interest_cat = interests.gather(1, (u_int < 0.45).long())
    hist_cat = torch.where(u_kind < generic[:, None], 0, torch.where(u_int < 0.9, interest_cat, rand_cat))
    valid = torch.arange(L)[None, :] < lengths[:, None]
    hist_news = pick(hist_cat, u_news)
    c_kind, c_int, c_news = (torch.rand(N, generator=g) for _ in range(3))
    cand = torch.where(c_kind < 0.4, pick(interests[torch.arange(N), (c_int < 0.5).long()], c_news),
                       (c_news * num_news).long().clamp(max=num_news - 1))
    noise = torch.rand(N, 1, generator=g)
    c = news_cat[cand]
    topical = valid & (hist_cat > 0)
    pref = ((hist_cat == c[:, None]) & topical).sum(1).double() / topical.sum(1).clamp(min=1)
    pref = torch.where(c == 0, 0.25, pref)
    labels, extra = _draw(g, {"click": -1.0 + affinity_scale * affinity * (pref - 0.25)}, noise)
    extra["generic"] = generic.float()
    hist_tokens = torch.where(valid[:, :, None], titles[hist_news], 0)  # [N, L, title_len]
    n_tok = title_lengths[cand]
    offsets = torch.zeros(N + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(n_tok, 0)
    cand_tokens = titles[cand][torch.arange(title_len)[None, :] < n_tok[:, None]]  # row-major: in order
    schema = Schema(sparse=[{"name": "title", "vocab_size": vocab_size, "embedding_dim": embedding_dim,
                             "multi_hot": True, "pooling": "mean"},
                            {"name": "category", "vocab_size": C, "embedding_dim": embedding_dim}],
                    sequences=[{"name": "hist_title", "target": "title", "max_len": L, "item_len": title_len}],
                    tasks=[{"name": "click"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), {"title": (cand_tokens, offsets), "category": c},
                           sequences={"hist_title": (hist_tokens, lengths)}, labels=labels, extra=extra)


def make_cold_items(num_samples: int = 40_000, num_items: int = 20_000, num_warm: int = 600,
                    num_categories: int = 20, cold_share: float = 0.3, max_len: int = 10, min_len: int = 3,
                    affinity: float = 3.0, affinity_scale: float = 1.0, quality_std: float = 0.5,
                    embedding_dim: int = 16, seed: int = 0) -> InMemoryDataset:
    """Session clicks driven by item categories (metadata), on a catalogue whose tail is cold.

    ``num_items`` items, each with a uniform category and a quality ``q ~ N(0, quality_std)``: the
    first ``num_warm`` are popular (drawn with probability ``1 - cold_share``, uniformly), the rest
    the cold tail (drawn with probability ``cold_share`` from ``num_items - num_warm`` ids: each is
    seen about once, if at all). A session (``min_len..max_len`` items) follows two interest
    categories of its user (80% of its items, else a random category); the candidate is from an
    interest category (half of the time) or any category. With ``pref`` the share of the session's
    items in the candidate's category,

        click: logit = -1.0 + affinity_scale * affinity * (pref - 0.2) + q[item]
        cart:  logit = -2.0 + affinity_scale * 0.8 * affinity * (pref - 0.2) + 0.5 q[item]

    Item ids say which items are alike only through training on them: a cold candidate's id
    embedding is untrained, so a model of ids alone scores cold candidates near chance, while one
    that reads the candidate's and the session's categories scores them by ``pref`` (M2TRec's
    claim). Tasks ``click`` and ``cart``; ``extra["cold"]`` marks cold candidates.
    """
    if (num_warm < 1 or num_items <= num_warm or num_categories < 2 or not 1 <= min_len <= max_len
            or not 0 <= cold_share <= 1 or num_samples < 1):
        raise ValueError("make_cold_items: need 1 <= num_warm < num_items, num_categories >= 2, "
                         "1 <= min_len <= max_len, 0 <= cold_share <= 1, num_samples >= 1")
    g = torch.Generator().manual_seed(seed)
    N, C, L = num_samples, num_categories, max_len
    item_cat = torch.randint(0, C, (num_items,), generator=g)
    q = _scaled_normal(g, (num_items,), quality_std)
    # items by (warm or cold, category), so a draw of a category picks an item of that pool
    pools = []
    for cold in (False, True):
        ids = torch.arange(num_warm, num_items) if cold else torch.arange(num_warm)
        cats = item_cat[ids]
        order = torch.argsort(cats * num_items + ids)
        pools.append((ids[order], torch.bincount(cats, minlength=C)))

    def pick(cat: torch.Tensor, cold: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(cat)
        for k, (ids, counts) in enumerate(pools):
            sel = cold == bool(k)
            n = counts[cat[sel]]
            start = (torch.cumsum(counts, 0) - counts)[cat[sel]]
            # a category absent from a pool (possible only for tiny catalogues) falls back to any of its ids
            at = (start + (u[sel] * n).long().clamp(max=(n - 1).clamp(min=0))).clamp(max=ids.numel() - 1)
            out[sel] = ids[at]
        return out

    interests = torch.multinomial(torch.ones(N, C), 2, replacement=False, generator=g)
    lengths = torch.randint(min_len, max_len + 1, (N,), generator=g)
    u_follow, u_int, u_cat, u_cold, u_item = (torch.rand(N, L, generator=g) for _ in range(5))
    s_cat = torch.where(u_follow < 0.8, interests.gather(1, (u_int < 0.5).long()),
                        (u_cat * C).long().clamp(max=C - 1))
    valid = torch.arange(L)[None, :] < lengths[:, None]
    s_item = pick(s_cat.reshape(-1), (u_cold < cold_share).reshape(-1), u_item.reshape(-1)).view(N, L)
    c_follow, c_int, c_cat, c_cold, c_item = (torch.rand(N, generator=g) for _ in range(5))
    c_category = torch.where(c_follow < 0.5, interests[torch.arange(N), (c_int < 0.5).long()],
                             (c_cat * C).long().clamp(max=C - 1))
    cold = c_cold < cold_share
    item = pick(c_category, cold, c_item)
    noise = torch.rand(N, 2, generator=g)
    s_cat_of = item_cat[s_item]
    pref = ((s_cat_of == item_cat[item][:, None]) & valid).sum(1).double() / lengths
    a = affinity_scale * affinity * (pref - 0.2)
    labels, extra = _draw(g, {"click": -1.0 + a + q[item], "cart": -2.0 + 0.8 * a + 0.5 * q[item]}, noise)
    extra["cold"] = cold
    s_item = torch.where(valid, s_item, 0)
    s_cat_of = torch.where(valid, s_cat_of, 0)
    schema = Schema(sparse=[{"name": "item", "vocab_size": num_items, "embedding_dim": embedding_dim},
                            {"name": "category", "vocab_size": C, "embedding_dim": embedding_dim}],
                    sequences=[{"name": "session_item", "target": "item", "max_len": L},
                               {"name": "session_category", "target": "category", "max_len": L}],
                    tasks=[{"name": "click"}, {"name": "cart"}])
    return InMemoryDataset(schema, torch.zeros(N, 0), {"item": item, "category": item_cat[item]},
                           sequences={"session_item": (s_item, lengths), "session_category": (s_cat_of, lengths)},
                           labels=labels, extra=extra)


PLANTED = {"news_interest": make_news_interest, "cold_items": make_cold_items}
