"""Collisionless embedding tables (Monolith, Liu et al. 2022): raw 64-bit ids remapped to rows of
a regular embedding table, one row per id, before the fused ``EmbeddingBagCollection`` looks them
up (the way TorchRec's managed-collision EBC puts a remapper before its EBC).

``IdTable`` is one feature's id map (the ``rankops.ops.hash_embedding`` probes over a key array,
plus per-slot row, count and last-seen step):

- **rows**: ``capacity`` id rows ``1..capacity``; row 0 is the shared out-of-vocabulary row (ids
  not admitted yet, ids unseen in evaluation, ids turned away when the table is full). The
  embedding table behind it has ``capacity + 1`` rows (``num_rows``).
- **admission**: an id gets a row once it has been seen ``min_count`` times (Monolith's frequency
  filter); until then it maps to row 0.
- **expiry**: an id not seen for more than ``ttl`` steps (training calls) loses its row (and its
  count); the row goes back to the free list and is re-initialised when it is handed out again.
- **full**: with no free row left, ``when_full="evict"`` takes the rows of the least recently seen
  ids (not seen in this step; TorchRec's LRU eviction), ``"oov"`` leaves the new ids on row 0
  until a row frees up, ``"error"`` raises.

Training calls (``insert``) update the map; evaluation calls (``lookup``) only read it. Rows are
handed out in a fixed order (smallest free row first, new ids in order of first appearance in the
batch), so the id -> row map is the same on every backend. The state dict holds the whole map.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from rankops.nn.embedding_bag import EmbeddingBagCollection, KeyedJaggedTensor, _kjt_parts
from rankops.ops.hash_embedding import EMPTY, check_ids, hash_insert, hash_lookup

WHEN_FULL = ("evict", "oov", "error")
OOV = 0  # the row every id without one of its own reads


def _pow2(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())


class IdTable(nn.Module):
    """One feature's collisionless id -> row map.

    Args:
        capacity: id rows (the embedding table has ``capacity + 1`` rows: row 0 is OOV).
        min_count: sightings before an id gets a row (1: on first sight).
        ttl: steps an id may go unseen before it is expired (None: never).
        slots: key slots of the hash map (rounded up to a power of two; default ``2 * capacity``).
            Pending (not yet admitted) ids hold a slot each, so a long tail with ``min_count > 1``
            wants more slots, or a ``ttl``.
        when_full: "evict" (least recently seen first), "oov" or "error"; see the module doc.

    Shapes: ``insert(ids [N]) -> rows [N]`` int64 in ``[0, capacity]``; so is ``lookup``.
    """

    def __init__(self, capacity: int, *, min_count: int = 1, ttl: int | None = None, slots: int | None = None,
                 when_full: str = "evict"):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"rankops.nn.IdTable: capacity must be >= 1, got {capacity}")
        if min_count < 1:
            raise ValueError(f"rankops.nn.IdTable: min_count must be >= 1, got {min_count}")
        if ttl is not None and ttl < 1:
            raise ValueError(f"rankops.nn.IdTable: ttl must be >= 1 or None, got {ttl}")
        if when_full not in WHEN_FULL:
            raise ValueError(f"rankops.nn.IdTable: when_full must be one of {WHEN_FULL}, got {when_full!r}")
        S = _pow2(slots if slots is not None else 2 * capacity)
        if S < capacity:
            raise ValueError(f"rankops.nn.IdTable: {S} slots cannot hold {capacity} ids")
        self.capacity, self.min_count, self.ttl, self.when_full = int(capacity), int(min_count), ttl, when_full
        self.register_buffer("keys", torch.full((S,), EMPTY, dtype=torch.int64))
        self.register_buffer("slot_row", torch.zeros(S, dtype=torch.int32))  # 0: no row (OOV)
        self.register_buffer("slot_count", torch.zeros(S, dtype=torch.int32))  # sightings since admission began
        self.register_buffer("slot_last", torch.full((S,), -1, dtype=torch.int32))  # step last seen (< 2**31 steps)
        # free rows as a stack, smallest on top: rows are handed out 1, 2, 3, ...
        self.register_buffer("free", torch.arange(capacity, 0, -1, dtype=torch.int32))
        self.register_buffer("num_free", torch.tensor(capacity, dtype=torch.int64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("num_keys", torch.tensor(0, dtype=torch.int64))  # slots holding a key, live or dead
        self.fresh = torch.zeros(0, dtype=torch.int64)  # rows handed out by the last insert (to re-initialise)

    @property
    def num_rows(self) -> int:
        return self.capacity + 1

    @property
    def num_slots(self) -> int:
        return self.keys.numel()

    def __len__(self) -> int:
        """Ids holding a row."""
        return self.capacity - int(self.num_free)

    def extra_repr(self) -> str:
        return (f"capacity={self.capacity}, slots={self.num_slots}, min_count={self.min_count}, ttl={self.ttl}, "
                f"when_full={self.when_full!r}")

    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def lookup(self, ids: Tensor) -> Tensor:
        """Rows of ``ids`` without changing the map (evaluation, serving): OOV for unknown ids."""
        slots = hash_lookup(self.keys, check_ids("IdTable.lookup", ids))
        rows = self.slot_row[slots.clamp(min=0)].to(torch.int64)
        return torch.where(slots >= 0, rows, OOV)

    @torch.no_grad()
    def insert(self, ids: Tensor) -> Tensor:
        """One training step over ``ids``: count them, admit, expire, hand out rows; their rows."""
        ids = check_ids("IdTable.insert", ids)
        self.step += 1
        step = int(self.step)
        if self.ttl is not None:
            self._free(((self.slot_row > 0) | (self.slot_count > 0)) & (step - self.slot_last > self.ttl))
        slots = self._slots(ids)
        # per-slot updates straight from the (repeating) slots, no sort over the batch: repeats
        # add up in index_add_ and write equal values in the index assignments
        fresh_keys = slots[self.slot_last[slots] < 0]  # slots unused since the last compaction
        if fresh_keys.numel():
            self.num_keys += fresh_keys.unique().numel()
        self.slot_last[slots] = step
        self.slot_count.index_add_(0, slots, torch.ones_like(slots, dtype=torch.int32))
        count = self.slot_count[slots]
        over = slots[count > self.min_count]
        if over.numel():  # counts saturate at min_count: all admission needs, and no overflow on hot ids
            self.slot_count[over] = self.min_count
        rows = self.slot_row[slots]
        at = torch.nonzero((rows == 0) & (count >= self.min_count)).flatten()
        self.fresh = self._assign(self._in_order(slots[at], at), step)  # new ids in order of first appearance
        if at.numel():
            rows[at] = self.slot_row[slots[at]]
        return rows.to(torch.int64)

    def forward(self, ids: Tensor) -> Tensor:
        return self.insert(ids) if self.training else self.lookup(ids)

    @staticmethod
    def _in_order(slots: Tensor, positions: Tensor) -> Tensor:
        """The distinct ``slots`` ordered by the first of their ``positions`` (ascending)."""
        if not slots.numel():
            return slots
        uniq, inverse = torch.unique(slots, return_inverse=True)
        first = torch.full((uniq.numel(),), int(positions[-1]) + 1, dtype=positions.dtype, device=slots.device)
        first.scatter_reduce_(0, inverse, positions, "amin")
        return uniq[torch.argsort(first)]

    # -----------------------------------------------------------------------------------------

    def _slots(self, ids: Tensor) -> Tensor:
        # dead keys (expired or evicted ids, kept so probing stays correct) are dropped once the
        # map is three-quarters full, before probe sequences grow long
        if int(self.num_keys) + ids.numel() > 0.75 * self.num_slots:
            self._compact()
        slots = hash_insert(self.keys, ids)
        if bool((slots < 0).any()):
            raise RuntimeError(
                f"rankops.nn.IdTable: all {self.num_slots} slots hold live ids (admitted or counting towards "
                f"min_count={self.min_count}); give more slots, a ttl, or a smaller min_count")
        return slots

    def _compact(self) -> None:
        """Rebuild the key array with the live ids only (their rows, counts and steps move along)."""
        live = torch.nonzero((self.slot_row > 0) | (self.slot_count > 0)).flatten()
        keys, row, count, last = (t[live].clone() for t in (self.keys, self.slot_row, self.slot_count, self.slot_last))
        self.keys.fill_(EMPTY)
        self.slot_row.zero_()
        self.slot_count.zero_()
        self.slot_last.fill_(-1)
        at = hash_insert(self.keys, keys)
        self.num_keys.fill_(keys.numel())
        self.slot_row[at], self.slot_count[at], self.slot_last[at] = row, count, last

    def _free(self, mask: Tensor) -> None:
        """Forget the ids of the slots in ``mask``: their rows go back on the free list."""
        slots = torch.nonzero(mask).flatten()
        if not slots.numel():
            return
        rows = self.slot_row[slots]
        rows = rows[rows > 0].sort(descending=True).values  # smallest on top of the stack
        nf = int(self.num_free)
        self.free[nf:nf + rows.numel()] = rows
        self.num_free += rows.numel()
        self.slot_row[slots] = 0
        self.slot_count[slots] = 0

    def _assign(self, new: Tensor, step: int) -> Tensor:
        """Rows for the slots ``new`` (in order); returns the rows handed out."""
        short = new.numel() - int(self.num_free)
        if short > 0:
            if self.when_full == "error":
                raise RuntimeError(f"rankops.nn.IdTable: {new.numel()} new ids but {int(self.num_free)} free rows "
                                   f"of {self.capacity} (when_full='error'); raise capacity, or set a ttl or "
                                   f"when_full='evict'")
            if self.when_full == "evict":
                held = torch.nonzero((self.slot_row > 0) & (self.slot_last < step)).flatten()
                # least recently seen first; ties broken by row so the choice is deterministic
                order = torch.argsort(self.slot_last[held].long() * (self.capacity + 1) + self.slot_row[held], stable=True)
                victims = torch.zeros_like(self.slot_row, dtype=torch.bool)
                victims[held[order[:short]]] = True
                self._free(victims)
            new = new[:int(self.num_free)]  # the rest stay on OOV, still counted
        nf, k = int(self.num_free), new.numel()
        rows = self.free[nf - k:nf].flip(0)
        self.slot_row[new] = rows
        self.num_free -= k
        return rows.to(torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the map's size comes from the checkpoint, so a table built with other slots still loads
        for name in ("keys", "slot_row", "slot_count", "slot_last"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CollisionlessIds(nn.Module):
    """Remaps the raw ids of some sparse features to collisionless rows (one ``IdTable`` each),
    leaving the other features of the KeyedJaggedTensor as they are.

    Args:
        capacity: ``{feature: id rows}`` (each feature's table then has ``capacity + 1`` rows).
        min_count, ttl, slots, when_full: as ``IdTable``, the same for every feature.

    ``forward(kjt) -> kjt``: same keys, lengths and weights, the listed features' values replaced
    by rows in ``[0, capacity[f]]`` (training: insert; eval: lookup). ``fresh()`` gives the rows
    each feature handed out in the last training call.
    """

    def __init__(self, capacity: Mapping[str, int], *, min_count: int = 1, ttl: int | None = None,
                 slots: int | None = None, when_full: str = "evict"):
        super().__init__()
        if not capacity:
            raise ValueError("rankops.nn.CollisionlessIds: needs at least one feature")
        self.tables = nn.ModuleDict({f: IdTable(c, min_count=min_count, ttl=ttl, slots=slots, when_full=when_full)
                                     for f, c in capacity.items()})

    @property
    def features(self) -> list[str]:
        return list(self.tables)

    def fresh(self) -> dict[str, Tensor]:
        return {f: t.fresh for f, t in self.tables.items()}

    def forward(self, kjt) -> KeyedJaggedTensor:
        return _remap(kjt, {f: t for f, t in self.tables.items()}, "CollisionlessIds")


class HashedIds(nn.Module):
    """The hashing trick, the baseline a collisionless table is measured against:
    ``row = id mod rows[f]`` (``torch.remainder``: in ``[0, rows)`` for negative ids too). Ids that
    meet in a row share its embedding. ``forward(kjt) -> kjt`` as ``CollisionlessIds``."""

    def __init__(self, rows: Mapping[str, int]):
        super().__init__()
        if not rows or min(rows.values()) < 1:
            raise ValueError(f"rankops.nn.HashedIds: needs at least one feature and rows >= 1, got {dict(rows)}")
        self.rows = dict(rows)

    @property
    def features(self) -> list[str]:
        return list(self.rows)

    def forward(self, kjt) -> KeyedJaggedTensor:
        return _remap(kjt, {f: (lambda ids, r=r: torch.remainder(ids, r)) for f, r in self.rows.items()}, "HashedIds")


def _remap(kjt, maps: Mapping[str, Callable[[Tensor], Tensor]], who: str) -> KeyedJaggedTensor:
    """``kjt`` with each feature ``f`` of ``maps``'s values replaced by ``maps[f](values)`` (int64);
    keys, offsets and weights as they were."""
    keys, values, off, weights = _kjt_parts(kjt)
    missing = [f for f in maps if f not in keys]
    if missing:
        raise ValueError(f"rankops.nn.{who}: features {missing} missing from the KeyedJaggedTensor (keys {keys})")
    B = (off.numel() - 1) // len(keys)
    parts = []
    for k, name in enumerate(keys):
        part = values[int(off[k * B]):int(off[(k + 1) * B])]
        parts.append(maps[name](part) if name in maps else part.to(torch.int64))  # a map checks its ids
    return KeyedJaggedTensor(keys, torch.cat(parts), offsets=off, weights=weights)


class CollisionlessEmbeddingBagCollection(nn.Module):
    """``CollisionlessIds`` in front of an ``EmbeddingBagCollection`` whose tables for the remapped
    features have ``capacity + 1`` rows: ``forward(kjt) = ebc(ids(kjt))``.

    A row handed out again (after expiry or eviction) starts afresh: its weights are drawn again
    from the table's initialisation (``init``: "uniform", TorchRec's ``U(-1/sqrt(rows), 1/sqrt(rows))``,
    or "zeros") and its fused-optimizer state (Adagrad sums) is zeroed, so the new id inherits
    nothing of the old. (A torch.optim optimizer over the tables keeps its own state; train the
    tables with a ``rankops.FusedOptimizer`` to have it reset too.)
    """

    def __init__(self, ebc: EmbeddingBagCollection, ids: CollisionlessIds, init: str = "uniform"):
        super().__init__()
        if init not in ("uniform", "zeros"):
            raise ValueError(f"rankops.nn.CollisionlessEmbeddingBagCollection: init must be 'uniform' or 'zeros', "
                             f"got {init!r}")
        self.ebc, self.ids, self.init = ebc, ids, init
        self._table_of = {}
        for t in ebc.tables:
            for f in t.feature_names:
                if f in ids.tables:
                    if t.num_embeddings != ids.tables[f].num_rows:
                        raise ValueError(f"rankops.nn.CollisionlessEmbeddingBagCollection: table {t.name!r} of "
                                         f"feature {f!r} has {t.num_embeddings} rows, its id map hands out "
                                         f"{ids.tables[f].num_rows} (capacity + 1)")
                    self._table_of[f] = t.name
        missing = [f for f in ids.features if f not in self._table_of]
        if missing:
            raise ValueError(f"rankops.nn.CollisionlessEmbeddingBagCollection: no table reads features {missing}")

    def forward(self, kjt) -> Tensor:
        remapped = self.ids(kjt)
        if self.training:
            for f, rows in self.ids.fresh().items():
                if rows.numel():
                    reset_rows(self.ebc, self._table_of[f], rows, self.init)
        return self.ebc(remapped)


@torch.no_grad()
def reset_rows(ebc: EmbeddingBagCollection, table: str, rows: Tensor, init: str = "uniform") -> None:
    """Re-initialise ``rows`` of ``ebc``'s table ``table`` (weights and fused-optimizer state)."""
    w = ebc.table_weight(table)
    rows = rows.to(device=w.device, dtype=torch.int64)
    if init == "zeros":
        w[rows] = 0
    else:
        bound = (1.0 / w.shape[0]) ** 0.5
        w[rows] = torch.empty(rows.numel(), w.shape[1], dtype=w.dtype, device=w.device).uniform_(-bound, bound)
    state = ebc.table_state(table)
    if state is not None:
        state[rows] = 0


__all__ = ["CollisionlessEmbeddingBagCollection", "CollisionlessIds", "HashedIds", "IdTable", "reset_rows"]
