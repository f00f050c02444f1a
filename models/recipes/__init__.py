"""Recipes: the industry ranking systems rankops was specified from, each as a zoo model plus the one
component that makes it that system, trained on a planted data set where that component matters.

    rankops.models.build("youtube", schema)                  # a recipe builds like any zoo model
    rankops train --config models/recipes/youtube.yaml       # its YAML: model, planted data, config

One module per recipe (``build(schema, **config)``) and one YAML beside it (``yaml_path(name)``).
"""

from __future__ import annotations

from pathlib import Path

# recipe -> (system, paper or post)
RECIPES = {
    "youtube": ("YouTube next-watch", "Zhao et al., Recommending What Video to Watch Next, RecSys 2019"),
    "linkedin_feed": ("LinkedIn homepage feed", "LinkedIn feed multi-task ranking"),
    "csrec": ("Tencent Kandian", "Bai et al., Contrastive Sharing Model for Multi-Task Recommendation, WWW 2022"),
    "spotify": ("Spotify", "Saravanou et al., Multi-Task Learning of Graph-based Inductive Representations of "
                           "Music Content, ISMIR 2021"),
    "snapchat_ads": ("Snapchat ad ranking", "Snap engineering: DCN-V2 + PLE for ad ranking"),
    "monolith": ("ByteDance BytePlus", "Liu et al., Monolith: Real Time Recommendation System With Collisionless "
                                       "Embedding Table, 2022"),
    "taobao": ("Alibaba Taobao search", "Zheng et al., multi-objective personalized product retrieval, 2022"),
    "mtrec": ("Huawei news", "Bi et al., MTRec: Multi-Task Learning over BERT for News Recommendation, "
                             "ACL Findings 2022"),
    "m2trec": ("Home Depot", "Shalaby et al., M2TRec: Metadata-aware Multi-task Transformer for Large-scale "
                             "and Cold-start free Session-based Recommendations, RecSys 2022"),
    "kuaishou": ("Kuaishou real-time short video", "Gong et al., Real-time Short Video Recommendation on Mobile "
                                                    "Devices, CIKM 2022"),
    "plm_nr": ("Microsoft news", "Wu et al., Empowering News Recommendation with Pre-trained Language Models, "
                                 "SIGIR 2021"),
}


def names() -> list[str]:
    """Every recipe ``rankops.models.build`` knows."""
    return list(RECIPES)


def yaml_path(name: str) -> Path:
    """The recipe's YAML for ``rankops train --config``."""
    if name not in RECIPES:
        raise ValueError(f"rankops.models.recipes: unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return Path(__file__).resolve().parent / f"{name}.yaml"
