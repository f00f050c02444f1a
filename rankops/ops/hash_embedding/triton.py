"""Triton probes of the hash_embedding family: one program per BLOCK ids, every lane walking its
id's probe sequence (the reference's: home slot ``splitmix64(id) & (S - 1)``, then linear) until it
finds the id or, inserting, claims an empty slot with one atomic compare-and-swap.

A lane that loses the swap reads the winner's key: the same id (a duplicate in the batch) stops
there, another id moves on, so two ids never share a slot and one id never takes two. Lanes that
are done keep swapping EMPTY for EMPTY, a no-op (``tl.atomic_cas`` takes no mask).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rankops.ops.hash_embedding.reference import EMPTY

BLOCK = 128
_EMPTY = tl.constexpr(EMPTY)  # a jit function reads globals only as constexprs


@triton.jit
def _probe_kernel(keys_ptr, ids_ptr, out_ptr, n, S, INSERT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    ids = tl.load(ids_ptr + offs, mask=valid, other=0)
    h = ids.to(tl.uint64, bitcast=True)
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB
    h = h ^ (h >> 31)
    slot = (h & (S - 1)).to(tl.int64)
    empty = tl.full([BLOCK], _EMPTY, tl.int64)
    found = tl.full([BLOCK], -1, tl.int64)
    todo = valid
    probes = 0
    while (tl.max(todo.to(tl.int32), 0) > 0) & (probes < S):
        if INSERT:
            seen = tl.atomic_cas(keys_ptr + slot, empty, tl.where(todo, ids, empty))
            hit = todo & ((seen == _EMPTY) | (seen == ids))
            todo = todo & ~hit
        else:
            seen = tl.load(keys_ptr + slot, mask=todo, other=_EMPTY)
            hit = todo & (seen == ids)
            todo = todo & ~hit & (seen != _EMPTY)  # an empty slot ends an absent id's walk
        found = tl.where(hit, slot, found)
        slot = (slot + 1) & (S - 1)
        probes += 1
    tl.store(out_ptr + offs, found, mask=valid)


def _probe(keys: Tensor, ids: Tensor, insert: bool) -> Tensor:
    ids = ids.contiguous()
    out = torch.empty_like(ids)
    if ids.numel():
        grid = (triton.cdiv(ids.numel(), BLOCK),)
        _probe_kernel[grid](keys, ids, out, ids.numel(), keys.numel(), INSERT=insert, BLOCK=BLOCK)
    return out


def hash_insert(keys: Tensor, ids: Tensor) -> Tensor:
    return _probe(keys, ids, insert=True)


def hash_lookup(keys: Tensor, ids: Tensor) -> Tensor:
    return _probe(keys, ids, insert=False)


def aot_specs() -> list[dict]:
    """The probe kernel's two variants (insert, lookup) at a batch of 65536 ids into 2**22 slots,
    for scripts/gpu_report.py (registers and spills on sm_90a, compiled without a GPU)."""
    from rankops.ops import _aot

    args = [("keys_ptr", "*i64", None), ("ids_ptr", "*i64", None), ("out_ptr", "*i64", None),
            ("n", "i32", 65536), ("S", "i32", 1 << 22)]
    return [_aot.spec(_probe_kernel, f"insert={insert}", args, dict(INSERT=insert, BLOCK=BLOCK))
            for insert in (True, False)]
