"""The model zoo: every ranking architecture on rankops' fused ops, built from one feature schema.

    import rankops.models as zoo
    model = zoo.build("deepfm", schema, dnn_hidden_units=(256, 128))   # model(batch) -> [B, T] logits
    zoo.names()                                                          # every architecture

Each named model is a preset of ``ranker.Ranker`` (the one configurable data flow) or, where the
paper's wiring differs (DLRM's bottom MLP and dot products, ESMM's pCTR x pCVR), a small module built
from the same parts. Installed as ``rankops.models``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rankops.data.schema import Schema

from .base import RankingModel

NAMES = ("lr", "fm", "dnn", "wide_deep", "dcn", "dcnv2", "deepfm", "xdeepfm", "dlrm", "autoint", "din", "bst",
         "shared_bottom", "mmoe", "ple", "esmm", "ranker")


def names() -> list[str]:
    """Every architecture ``build`` knows (the recipes of industry systems: ``recipes.names()``)."""
    return list(NAMES)


def build(name: str, schema: Schema | dict | str | Path, **config) -> RankingModel:
    """Model ``name`` for ``schema`` (a Schema, its dict, or a YAML / JSON file), with ``config``
    overriding the model's defaults. Raises ValueError for an unknown model, an unknown option, or a
    schema the model cannot use (DIN without a sequence, MMoE with one task...)."""
    from . import recipes

    if name not in NAMES and name not in recipes.RECIPES:
        raise ValueError(f"rankops.models: unknown model {name!r}; choose one of {', '.join(NAMES)} "
                         f"or a recipe: {', '.join(recipes.RECIPES)}")
    if isinstance(schema, dict):
        schema = Schema.from_dict(schema)
    elif isinstance(schema, (str, Path)):
        schema = Schema.load(schema)
    module = name if name in NAMES else f"recipes.{name}"
    return importlib.import_module(f"{__name__}.{module}").build(schema, **config)


__all__ = ["RankingModel", "build", "names"]
