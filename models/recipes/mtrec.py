"""Huawei news, MTRec (Bi et al., MTRec: Multi-Task Learning over BERT for News Recommendation, ACL
Findings 2022): the news encoder (BERT in the paper; here ``rankops.nn.TextEncoder``, a small
transformer over the title tokens trained from scratch: no weights can be downloaded) is trained by
the click task **and an auxiliary task**, classifying each candidate title into its category
(``aux_weight`` times the cross-entropy); the user vector is **additive attention** over the
clicked news. ``aux_weight=0`` is the comparison: the same model without the auxiliary task.

Planted data: ``news_interest`` (``rankops.data.synthetic_news.make_news_interest``) with few
samples per title word (see models/recipes/mtrec.yaml), where learning the words of a category
from clicks alone is slow.
"""

from __future__ import annotations

from .news_ranker import NewsRanker

DEFAULTS = dict(embed_dim=32, text_layers=1, text_heads=2, text_pooling="attention", dropout=0.0,
                user_pooling="attention", aux_feature="category", aux_weight=1.0)


def build(schema, **config) -> NewsRanker:
    unknown = sorted(set(config) - set(DEFAULTS) - {"title"})
    if unknown:
        raise ValueError(f"mtrec: unknown options {unknown}; options: {sorted(DEFAULTS) + ['title']}")
    config = {**DEFAULTS, **config}
    if config["aux_feature"] is not None and config["aux_feature"] not in [f.name for f in schema.sparse]:
        raise ValueError(f"mtrec: the auxiliary task classifies the one-hot feature {config['aux_feature']!r} (the "
                         f"news category), which the schema lacks; set aux_feature to one it has, or aux_weight 0 "
                         f"and aux_feature null")
    return NewsRanker(schema, "mtrec", **config)
