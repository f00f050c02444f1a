"""hash_embedding: the id map of a collisionless embedding table (Monolith's, Liu et al. 2022).

Raw 64-bit ids are keys of an open-addressing hash map, ``keys[S]`` (S a power of two, empty
slots hold ``EMPTY = -2**63``, the one id value that is reserved). An id's probe sequence is its
home slot ``splitmix64(id) & (S - 1)`` and the slots after it, in turn (linear probing), so ids
that collide in the hash still get slots of their own: an id owns exactly one slot, a slot at most
one id. Two ops, batched over a 1-D id tensor:

    hash_insert(keys, ids) -> slots [N]   the id's slot, claiming the first empty one of its probe
                                          sequence on first sight (-1: every slot is taken); keys is
                                          updated in place
    hash_lookup(keys, ids) -> slots [N]   the id's slot, or -1 where it is absent; keys is only read

Backends: ``reference`` (one id at a time, Python integers), ``cpp`` (csrc/cpu/hash_embedding.cpp:
thread-parallel, a compare-and-swap per claimed slot) and ``triton`` (GPU; a compare-and-swap per
probe). The parallel backends may place two colliding *new* ids of one batch in either order; what
the map holds (each id in one slot of its probe sequence, ids on distinct slots) does not depend
on it. What a slot means (a row of an embedding table, admission counts, expiry) is the table's
business: ``rankops.nn.hash_embedding``.

The ops are torch custom ops (``torch.ops.rankops.hash_insert`` mutates ``keys``; ``hash_lookup``
is pure) with fakes, so they trace under torch.compile; they have no gradient. They are declared
here rather than with ``_declare.op``, which declares differentiable, non-mutating op pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rankops.ops import _dispatch
from rankops.ops._declare import NATIVE
from rankops.ops.hash_embedding.reference import EMPTY

FAMILY = "hash_embedding"
_IMPLS = {name: {"reference": f"rankops.ops.hash_embedding.reference:{name}", "cpp": f"{NATIVE}.{name}",
                 "triton": f"rankops.ops.hash_embedding.triton:{name}"}
          for name in ("hash_insert", "hash_lookup")}


def _run(name: str, keys: Tensor, ids: Tensor) -> Tensor:
    return _dispatch.call(FAMILY, _IMPLS[name], keys.device, keys, ids)


@torch.library.custom_op("rankops::hash_insert", mutates_args=("keys",))
def _insert_op(keys: Tensor, ids: Tensor) -> Tensor:
    return _run("hash_insert", keys, ids)


@torch.library.custom_op("rankops::hash_lookup", mutates_args=())
def _lookup_op(keys: Tensor, ids: Tensor) -> Tensor:
    return _run("hash_lookup", keys, ids)


@_insert_op.register_fake
def _(keys, ids):
    return torch.empty_like(ids)


@_lookup_op.register_fake
def _(keys, ids):
    return torch.empty_like(ids)


def check_ids(op: str, ids) -> Tensor:
    """``ids`` as a contiguous 1-D int64 tensor (int32 is widened); ValueError for anything else,
    and for the reserved id ``EMPTY``."""
    if not isinstance(ids, Tensor):
        raise ValueError(f"rankops.{op}: ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dim() != 1:
        raise ValueError(f"rankops.{op}: ids must be 1-D [N], got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"rankops.{op}: ids must be int64 (raw 64-bit ids) or int32, got {ids.dtype}")
    ids = ids.to(torch.int64).contiguous()
    # a value check reads the ids (a sync); a compiled graph cannot branch on it and skips it
    if not torch.compiler.is_compiling() and ids.numel() and bool((ids == EMPTY).any()):
        raise ValueError(f"rankops.{op}: id -2**63 is reserved (it marks an empty slot)")
    return ids


def check_keys(op: str, keys, ids: Tensor) -> Tensor:
    if not isinstance(keys, Tensor) or keys.dim() != 1 or keys.dtype != torch.int64 or not keys.is_contiguous():
        raise ValueError(f"rankops.{op}: keys must be a contiguous 1-D int64 tensor (the map's slots)")
    S = keys.numel()
    if S < 1 or S & (S - 1):
        raise ValueError(f"rankops.{op}: the number of slots must be a power of two, got {S}")
    if keys.device != ids.device:
        raise ValueError(f"rankops.{op}: ids are on {ids.device} but keys on {keys.device}; they must match")
    return keys


def hash_insert(keys: Tensor, ids: Tensor) -> Tensor:
    """The slot of every id, inserting the ids not yet in ``keys`` (in place).

    Args:
        keys: ``[S]`` int64, S a power of two; ``EMPTY`` marks a free slot.
        ids: ``[N]`` int64 raw ids (any value but ``EMPTY``; int32 is widened), repeats allowed.
    Returns:
        ``[N]`` int64 slots; equal ids get equal slots, distinct ids distinct slots; -1 for an id
        that found every slot taken by other ids.
    """
    ids = check_ids("hash_insert", ids)
    keys = check_keys("hash_insert", keys, ids)
    if _dispatch.eager(keys, ids):
        return _run("hash_insert", keys, ids)
    return _insert_op(keys, ids)


def hash_lookup(keys: Tensor, ids: Tensor) -> Tensor:
    """The slot of every id in ``keys``, -1 where it is absent (``keys`` is not changed). Shapes
    and dtypes as ``hash_insert``."""
    ids = check_ids("hash_lookup", ids)
    keys = check_keys("hash_lookup", keys, ids)
    if _dispatch.eager(keys, ids):
        return _run("hash_lookup", keys, ids)
    return _lookup_op(keys, ids)


def splitmix64(ids: Tensor) -> Tensor:
    """The 64-bit hash every backend probes from, vectorised: int64 in, int64 (the hash's bits) out.
    int64 products wrap modulo 2**64 like uint64 ones; right shifts are made logical by masking."""
    x = ids.to(torch.int64)

    def shr(v: Tensor, k: int) -> Tensor:
        return (v >> k) & ((1 << (64 - k)) - 1)

    x = x ^ shr(x, 30)
    x = x * -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 as a signed int64
    x = x ^ shr(x, 27)
    x = x * -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB as a signed int64
    return x ^ shr(x, 31)


def home_slots(ids: Tensor, num_slots: int) -> Tensor:
    """Where each id's probe sequence starts in a map of ``num_slots`` slots (a power of two)."""
    return splitmix64(ids) & (num_slots - 1)


__all__ = ["EMPTY", "hash_insert", "hash_lookup", "home_slots", "splitmix64"]
