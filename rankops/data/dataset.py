"""Data sets the trainer reads: anything with a schema that yields ``Batch``es.

``InMemoryDataset`` holds encoded columns as tensors (synthetic data, UCI Adult, CSV / Parquet
files that fit in memory) and cuts batches by gathering rows; streaming readers (Criteo TSV) yield
batches chunk by chunk and implement the same two methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch
from torch import Tensor

from rankops.data.batch import Batch
from rankops.data.schema import Schema
from rankops.nn.embedding_bag import KeyedJaggedTensor


class Dataset(Protocol):
    schema: Schema

    def num_batches(self, batch_size: int) -> int | None:
        """Batches in one pass, or None when unknown before reading (a stream)."""

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                start: int = 0) -> Iterator[Batch]:
        """One pass in batches; with ``shuffle`` the order depends only on (seed, epoch), and
        ``start`` skips that many batches of the same pass (exact resume)."""


def global_batches(rows: int, global_batch: int, world: int) -> int:
    """The steps of a pass over ``rows`` rows in global batches under ``world`` ranks. A last global
    batch is cut to a multiple of ``world`` rows (at most ``world - 1`` rows a pass left out), so
    every rank steps on as many rows as its peers: DDP's average of the ranks' mean losses is then
    the global batch's mean, TorchRec's sharded tables get the equal batches they need, and no rank
    is left without rows to skip a step its peers take (their all-reduce would wait for it)."""
    full, tail = divmod(rows, global_batch)
    return full + (tail >= world)


def global_slice(rows: int, global_batch: int, rank: int, world: int) -> Tensor:
    """The row indices (int64) of ``rank``'s part of each global batch over ``rows`` rows, in order: its
    contiguous ``global_batch / world`` rows of every full one and its equal share of a shorter last
    one, cut to a multiple of ``world`` rows (``global_batches``). In batches of ``global_batch /
    world`` they are the rank's local batches."""
    local = global_batch // world
    full, tail = divmod(rows, global_batch)
    idx = [(torch.arange(full)[:, None] * global_batch + rank * local + torch.arange(local)[None, :]).reshape(-1)]
    share = tail // world
    if share:
        first = full * global_batch + rank * share
        idx.append(torch.arange(first, first + share))
    return torch.cat(idx)


@dataclass
class InMemoryDataset:
    """Encoded columns of N samples.

    dense:     ``[N, n]`` float32 (schema order).
    sparse:    ``{feature: ids [N]}`` for one-hot features, ``{feature: (values [nnz], offsets [N+1])}``
               for multi-hot ones; ids already in ``[0, vocab_size)``.
    sequences: ``{name: (ids [N, L], lengths [N])}``.
    labels:    ``[N, T]`` float32 (None for unlabelled data).
    extra:     other per-sample columns kept aside (e.g. a user id for group AUC, the planted
               probabilities of synthetic data).
    """

    schema: Schema
    dense: Tensor
    sparse: dict[str, object]
    sequences: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    labels: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        n = self.dense.shape[0]
        for name, col in self.sparse.items():
            rows = col[1].numel() - 1 if isinstance(col, tuple) else col.shape[0]
            if rows != n:
                raise ValueError(f"InMemoryDataset: sparse column {name!r} has {rows} rows, dense has {n}")
        if self.labels is not None and self.labels.shape[0] != n:
            raise ValueError(f"InMemoryDataset: labels have {self.labels.shape[0]} rows, dense has {n}")

    def __len__(self) -> int:
        return self.dense.shape[0]

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def _one_hot_block(self) -> Tensor | None:
        """Every sparse column stacked ``[F, N]`` when all are one-hot (None otherwise): a batch's ids
        are then one gather, already in the KJT's feature-major order. Built on first use; the
        columns then become views of it (no second copy), and a column replaced or written in
        place since (its identity or version changed) rebuilds it."""
        cols = [self.sparse[f.name] for f in self.schema.sparse]
        if not cols or any(isinstance(c, tuple) for c in cols):
            return None
        key = tuple((id(c), c._version) for c in cols)
        cached = self.__dict__.get("_block")
        if cached is not None and cached[0] == key:
            return cached[1]
        block = torch.stack(cols)
        for i, f in enumerate(self.schema.sparse):
            self.sparse[f.name] = block[i]
        self.__dict__["_block"] = (tuple((id(self.sparse[f.name]), block._version) for f in self.schema.sparse), block)
        return block

    def take(self, rows: Tensor) -> Batch:
        """The batch of samples ``rows`` (int64 indices)."""
        # index_select, not x[rows]: on a loaded machine the 2-D advanced-indexing kernel's OpenMP
        # fork costs ~20 ms per call (measured on the 2-core CI box), index_select ~10 us
        seqs = {k: (ids.index_select(0, rows), n[rows]) for k, (ids, n) in self.sequences.items()}
        labels = None if self.labels is None else self.labels.index_select(0, rows)
        block = self._one_hot_block()
        if block is not None:
            kjt = KeyedJaggedTensor([f.name for f in self.schema.sparse], block.index_select(1, rows).reshape(-1),
                                    lengths=torch.ones(block.shape[0] * rows.numel(), dtype=torch.int64))
            return Batch(self.dense.index_select(0, rows), kjt, seqs, labels)
        values, lengths = [], []
        for f in self.schema.sparse:
            col = self.sparse[f.name]
            if isinstance(col, tuple):
                v, off = col
                starts, ends = off[rows], off[rows + 1]
                n = ends - starts
                # gather each chosen bag: position p of the output reads v[start of its bag + rank in bag]
                bag_start = torch.repeat_interleave(starts - torch.cumsum(n, 0) + n, n)
                values.append(v[bag_start + torch.arange(int(n.sum()))])
                lengths.append(n)
            else:
                values.append(col[rows])
                lengths.append(torch.ones(rows.numel(), dtype=torch.int64))
        kjt = KeyedJaggedTensor([f.name for f in self.schema.sparse], torch.cat(values), lengths=torch.cat(lengths))
        return Batch(self.dense.index_select(0, rows), kjt, seqs, labels)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                start: int = 0) -> Iterator[Batch]:
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        else:
            order = torch.arange(n)
        for i in range(start * batch_size, n, batch_size):
            yield self.take(order[i:i + batch_size])

    def split(self, fractions: tuple[float, ...] = (0.8, 0.2), seed: int = 0) -> list["InMemoryDataset"]:
        """Random disjoint subsets of the given fractions (the last takes the remainder)."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        cuts, at = [], 0
        for i, f in enumerate(fractions):
            size = n - at if i == len(fractions) - 1 else int(round(f * n))
            cuts.append(order[at:at + size].sort().values)
            at += size
        return [self.subset(rows) for rows in cuts]

    def subset(self, rows: Tensor) -> "InMemoryDataset":
        sparse = {}
        for name, col in self.sparse.items():
            if isinstance(col, tuple):
                b = self.take(rows)  # reuse the jagged gather
                k = [f.name for f in self.schema.sparse].index(name)
                B = rows.numel()
                off = b.sparse.offsets()[k * B:(k + 1) * B + 1]
                sparse[name] = (b.sparse.values()[int(off[0]):int(off[-1])], off - off[0])
            else:
                sparse[name] = col[rows]
        return InMemoryDataset(self.schema, self.dense[rows], sparse,
                               {k: (i[rows], n[rows]) for k, (i, n) in self.sequences.items()},
                               None if self.labels is None else self.labels[rows],
                               {k: v[rows] for k, v in self.extra.items()})
