"""ByteDance Monolith (Liu et al., Monolith: Real Time Recommendation System With Collisionless
Embedding Table, 2022): DeepFM-style crosses (first-order + FM + DNN, ``models/deepfm.py``'s
preset of the Ranker) over **collisionless embedding tables** fed raw 64-bit ids. Each raw-id
feature named in ``capacity`` gets a ``rankops.nn.IdTable``: a hash map that hands every id a row
of its own on first sight (after ``min_count`` sightings: Monolith's frequency filter), expires
ids unseen for ``ttl`` steps, and turns the rows it frees over to new ids with fresh weights and
fused-optimizer state. The fused embedding kernels then look up rows ``< capacity + 1`` as usual.

``id_map="modulo"`` is the baseline of the same embedding memory: the hashing trick,
``row = id % (capacity + 1)`` (``rankops.nn.HashedIds``), where ids share rows.

Planted data: ``long_tail`` (``rankops.data.synthetic_longtail.make_long_tail``).
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

from rankops.data.batch import Batch
from rankops.data.schema import Schema
from rankops.nn.hash_embedding import CollisionlessIds, HashedIds, reset_rows

from ..base import RankingModel
from ..ranker import Ranker, preset

DEFAULTS = dict(use_linear=True, interaction="fm", dnn_hidden_units=(64, 32))
ID_MAPS = ("collisionless", "modulo")


class Monolith(RankingModel):
    """Raw ids -> rows (collisionless ``IdTable`` per feature, or ``id % rows``) -> the DeepFM Ranker.

    Args (beside ``schema``, whose ``capacity`` features carry raw ids in their values):
        capacity: ``{feature: id rows}``; the feature's table has ``capacity + 1`` rows (row 0: OOV).
        id_map: "collisionless" or "modulo" (the hashing-trick baseline, same rows).
        min_count, ttl, slots, when_full: the id tables' admission, expiry, size and full policy
            (``rankops.nn.IdTable``).
        Every other option is the Ranker's (``dnn_hidden_units``, ``embedding_optimizer``, ...).
    """

    def __init__(self, schema: Schema, capacity: Mapping[str, int], *, id_map: str = "collisionless",
                 min_count: int = 1, ttl: int | None = None, slots: int | None = None, when_full: str = "evict",
                 **ranker_config):
        super().__init__(schema, "monolith")
        err = lambda msg: ValueError(f"rankops.models.monolith: {msg}")  # noqa: E731
        if id_map not in ID_MAPS:
            raise err(f"id_map must be one of {ID_MAPS}, got {id_map!r}")
        capacity = dict(capacity or {})
        sparse = {f.name: f for f in schema.sparse}
        unknown = [f for f in capacity if f not in sparse]
        if not capacity or unknown:
            raise err(f"capacity must name raw-id sparse features of the schema ({list(sparse)}); got {capacity}")
        self._config = dict(capacity=capacity, id_map=id_map, min_count=min_count, ttl=ttl, slots=slots,
                            when_full=when_full, **{k: v for k, v in ranker_config.items()
                                                    if k != "embedding_optimizer"})
        # the Ranker sees rows, not raw ids: each remapped feature's vocabulary is its table's rows
        d = schema.to_dict()
        d["sparse"] = [{**f, "vocab_size": capacity[f["name"]] + 1} if f["name"] in capacity else f for f in d["sparse"]]
        self.ranker: Ranker = preset("monolith", Schema.from_dict(d), DEFAULTS, ranker_config)
        if id_map == "collisionless":
            self.ids = CollisionlessIds(capacity, min_count=min_count, ttl=ttl, slots=slots, when_full=when_full)
        else:
            self.ids = HashedIds({f: c + 1 for f, c in capacity.items()})

    def forward(self, batch: Batch) -> Tensor:
        sparse = self.ids(batch.sparse)
        if self.training and isinstance(self.ids, CollisionlessIds):
            self._reset(self.ids.fresh())
        return self.ranker(Batch(batch.dense, sparse, batch.sequences, batch.labels))

    def _reset(self, fresh: dict[str, Tensor]) -> None:
        """Rows handed to new ids start as new rows: embeddings redrawn, first-order weights zeroed."""
        for f, rows in fresh.items():
            if not rows.numel():
                continue
            table = self.ranker.schema.feature(f).table_name
            if self.ranker.features is not None:
                reset_rows(self.ranker.features.embeddings, table, rows, "uniform")
            if self.ranker.linear is not None:
                reset_rows(self.ranker.linear, table, rows, "zeros")


def build(schema, **config) -> Monolith:
    if "capacity" not in config:
        raise ValueError("rankops.models.monolith: needs capacity={raw-id feature: rows}, e.g. "
                         "{user: 16384, item: 8192}")
    return Monolith(schema, **config)
