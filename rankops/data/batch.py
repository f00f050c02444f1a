"""The batch every model takes: dense ``[B, n]``, sparse ids as a KeyedJaggedTensor, padded
behaviour sequences with their lengths, labels ``[B, T]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor

from rankops.data.schema import Schema
from rankops.nn.embedding_bag import KeyedJaggedTensor


@dataclass
class Batch:
    """One batch of B samples.

    dense:     ``[B, n]`` float, the schema's dense features side by side in schema order.
    sparse:    KeyedJaggedTensor, keys = the schema's sparse features in schema order, B bags each.
    sequences: ``{name: (ids [B, L] int64, lengths [B] int64)}``, ids past a sample's length are padding;
               a sequence of id lists (the schema's ``item_len``) has ids ``[B, L, item_len]``, 0-padded.
    labels:    ``[B, T]`` float, one column per task (absent at prediction time).
    """

    dense: Tensor
    sparse: KeyedJaggedTensor
    sequences: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    labels: Tensor | None = None

    @property
    def size(self) -> int:
        return self.dense.shape[0]

    def to(self, device, non_blocking: bool = False) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        kjt = self.sparse
        sparse = KeyedJaggedTensor(kjt.keys(), mv(kjt.values()), offsets=mv(kjt.offsets()),
                                   weights=mv(kjt.weights_or_none()))
        return Batch(mv(self.dense), sparse, {k: (mv(i), mv(n)) for k, (i, n) in self.sequences.items()},
                     mv(self.labels))

    def pin_memory(self) -> "Batch":
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        kjt = self.sparse
        sparse = KeyedJaggedTensor(kjt.keys(), pin(kjt.values()), offsets=pin(kjt.offsets()),
                                   weights=pin(kjt.weights_or_none()))
        return Batch(pin(self.dense), sparse, {k: (pin(i), pin(n)) for k, (i, n) in self.sequences.items()},
                     pin(self.labels))

    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_features(cls, schema: Schema, features: Mapping[str, object], labels: Tensor | None = None) -> "Batch":
        """Assemble a batch from per-feature tensors.

        ``features[name]``: a dense feature ``[B]`` or ``[B, dim]``; a one-hot sparse feature ``[B]``
        ids; a multi-hot one ``(values [nnz], lengths [B])``; a sequence ``(ids [B, L], lengths [B])``.
        ``labels``: ``[B]`` or ``[B, T]``.
        """
        missing = [f.name for f in schema.dense + schema.sparse + schema.sequences if f.name not in features]
        if missing:
            raise ValueError(f"Batch: features missing: {missing}")
        dense_parts = []
        for f in schema.dense:
            t = torch.as_tensor(features[f.name])
            dense_parts.append(t.reshape(t.shape[0], -1).float())
        values, lengths = [], []
        for f in schema.sparse:
            v = features[f.name]
            if isinstance(v, (tuple, list)):
                vals, lens = v
            else:
                vals = torch.as_tensor(v).reshape(-1)
                lens = torch.ones(vals.numel(), dtype=torch.int64)
            values.append(torch.as_tensor(vals).long())
            lengths.append(torch.as_tensor(lens).long())
        B = lengths[0].numel() if lengths else dense_parts[0].shape[0]
        dense = torch.cat(dense_parts, 1) if dense_parts else torch.zeros(B, 0)
        kjt = KeyedJaggedTensor([f.name for f in schema.sparse], torch.cat(values) if values else
                                torch.zeros(0, dtype=torch.int64),
                                lengths=torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.int64))
        seqs = {}
        for s in schema.sequences:
            ids, lens = features[s.name]
            seqs[s.name] = (torch.as_tensor(ids).long(), torch.as_tensor(lens).long())
        if labels is not None:
            labels = torch.as_tensor(labels).float()
            labels = labels[:, None] if labels.dim() == 1 else labels
        return cls(dense, kjt, seqs, labels)

    def validate(self, schema: Schema) -> None:
        """Raise ValueError / IndexError / TypeError naming the feature that does not fit ``schema``.
        Reads values (one device sync): the trainer calls it on the first batches, not every step."""
        B = self.size
        if self.dense.dim() != 2 or self.dense.shape[1] != schema.dense_dim:
            raise ValueError(f"Batch: dense must be [B, {schema.dense_dim}] (features "
                             f"{[f.name for f in schema.dense]}), got {tuple(self.dense.shape)}")
        if not self.dense.is_floating_point():
            raise TypeError(f"Batch: dense must be a float tensor, got {self.dense.dtype}")
        keys = self.sparse.keys()
        want = [f.name for f in schema.sparse]
        missing = [k for k in want if k not in keys]
        if missing:
            raise ValueError(f"Batch: sparse features missing: {missing} (the batch has {keys})")
        values = self.sparse.values()
        if values.is_floating_point() or values.dtype == torch.bool:
            raise TypeError(f"Batch: sparse ids must be an integer tensor, got {values.dtype}")
        off = self.sparse.offsets()
        if self.sparse.stride() != B:
            raise ValueError(f"Batch: the sparse features have {self.sparse.stride()} bags each, dense has {B} rows")
        for k, name in enumerate(keys):
            if name not in want:
                continue
            f = schema.feature(name)
            part = values[int(off[k * B]):int(off[(k + 1) * B])]
            if not f.multi_hot and not bool((off[k * B + 1:(k + 1) * B + 1] - off[k * B:(k + 1) * B] == 1).all()):
                raise ValueError(f"Batch: one-hot feature {name!r} must have exactly one id per sample")
            if part.numel() and (int(part.min()) < 0 or int(part.max()) >= f.vocab_size):
                bad = part[(part < 0) | (part >= f.vocab_size)][0]
                raise IndexError(f"Batch: feature {name!r} has id {int(bad)} outside its vocabulary "
                                 f"[0, {f.vocab_size})")
        for s in schema.sequences:
            if s.name not in self.sequences:
                raise ValueError(f"Batch: sequence {s.name!r} missing (the batch has {sorted(self.sequences)})")
            ids, lens = self.sequences[s.name]
            want_dim, shape = (2, "[B, L]") if s.item_len is None else (3, f"[B, L, {s.item_len}]")
            if (ids.dim() != want_dim or ids.shape[0] != B or lens.shape != (B,)
                    or (s.item_len is not None and ids.shape[2] != s.item_len)):
                raise ValueError(f"Batch: sequence {s.name!r} must be ids {shape} and lengths [B] with B = {B}, got "
                                 f"{tuple(ids.shape)} and {tuple(lens.shape)}")
            if ids.is_floating_point():
                raise TypeError(f"Batch: sequence {s.name!r} ids must be integers, got {ids.dtype}")
            if lens.numel() and (int(lens.min()) < 0 or int(lens.max()) > ids.shape[1]):
                raise ValueError(f"Batch: sequence {s.name!r} has lengths outside [0, {ids.shape[1]}]")
            vocab = schema.feature(s.target).vocab_size
            valid = torch.arange(ids.shape[1], device=ids.device)[None, :] < lens[:, None]
            used = ids[valid]
            if used.numel() and (int(used.min()) < 0 or int(used.max()) >= vocab):
                raise IndexError(f"Batch: sequence {s.name!r} has an id outside its target {s.target!r}'s "
                                 f"vocabulary [0, {vocab})")
        if self.labels is not None:
            if self.labels.dim() != 2 or self.labels.shape != (B, schema.num_tasks):
                raise ValueError(f"Batch: labels must be [B, {schema.num_tasks}] (tasks "
                                 f"{[t.name for t in schema.tasks]}), got {tuple(self.labels.shape)}")
