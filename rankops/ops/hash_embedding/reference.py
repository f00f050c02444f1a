"""Ground truth of the hash_embedding probes: one id at a time, Python integers, the same linear
probing as the kernels (home slot ``splitmix64(id) & (S - 1)``, then the next slots in turn)."""

from __future__ import annotations

import torch
from torch import Tensor

EMPTY = -(2 ** 63)  # the key of an empty slot
_MASK = 2 ** 64 - 1


def splitmix64(x: int) -> int:
    """The 64-bit finaliser of SplitMix64 (Steele et al. 2014) on the id's two's-complement bits."""
    x &= _MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _probe(keys: Tensor, ids: Tensor, insert: bool) -> Tensor:
    S = keys.numel()
    table = keys.tolist()
    out = []
    for i in ids.tolist():
        s, found = splitmix64(i) & (S - 1), -1
        for _ in range(S):
            if table[s] == i:
                found = s
                break
            if table[s] == EMPTY:
                if insert:
                    table[s] = i
                    found = s
                break
            s = (s + 1) & (S - 1)
        out.append(found)
    if insert:
        keys.copy_(torch.tensor(table, dtype=torch.int64))
    return torch.tensor(out, dtype=torch.int64, device=ids.device)


def hash_insert(keys: Tensor, ids: Tensor) -> Tensor:
    return _probe(keys, ids, insert=True)


def hash_lookup(keys: Tensor, ids: Tensor) -> Tensor:
    return _probe(keys, ids, insert=False)
