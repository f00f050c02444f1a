"""Microsoft news, PLM-NR (Wu et al., Empowering News Recommendation with Pre-trained Language
Models, SIGIR 2021): a news encoder over each title (a pre-trained language model in the paper; here
``rankops.nn.TextEncoder``, a small transformer trained from scratch) with attention pooling of its
token outputs, then **attention pooling** of the user's clicked news into a user vector
(``rankops.nn.AdditiveAttentionPooling``), scored against the candidate's vector by a dot product.
``user_pooling="mean"`` is the comparison: the same model with the clicked news averaged.

Planted data: ``news_interest`` (``rankops.data.synthetic_news.make_news_interest``).
"""

from __future__ import annotations

from .news_ranker import NewsRanker

DEFAULTS = dict(embed_dim=32, text_layers=1, text_heads=2, text_pooling="attention", dropout=0.0,
                user_pooling="attention")


def build(schema, **config) -> NewsRanker:
    unknown = sorted(set(config) - set(DEFAULTS) - {"title"})
    if unknown:
        raise ValueError(f"plm_nr: unknown options {unknown}; options: {sorted(DEFAULTS) + ['title']}")
    return NewsRanker(schema, "plm_nr", **{**DEFAULTS, **config})
