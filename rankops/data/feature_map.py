"""The feature map: how raw columns become model inputs, fitted on the training data.

A ``FeatureMap`` is a list of ``Column`` specs (each raw column's role and encoding) plus what was
learned from the training data: each categorical column's vocabulary (values seen at least
``min_freq`` times; everything else, and missing values, map to the out-of-vocabulary id 0) and each
numeric column's statistics (mean / std after the optional log transform, min / max). Hashed columns
learn nothing: ``id = 1 + fnv1a(value) mod (hash_size - 1)``, 0 is kept for missing values.

It is saved as JSON beside the model (``feature_map.json``) and reused as is by ``eval`` / ``predict``
on new files, so the ids and scales a model sees never change after training. ``schema()`` is the
model-facing ``Schema`` it produces.

Roles (``Column.role``):
    dense      a number; ``transform``: ``none`` / ``standard`` (z-score) / ``log`` (``log1p(max(x, 0))``,
               Criteo's integers) / ``log_standard`` / ``minmax``; missing -> ``fill`` (then transformed)
    sparse     one categorical id per sample
    multi_hot  a bag of ids in one string, split on ``separator``
    sequence   a behaviour sequence in one string (``separator``), ids in ``target``'s vocabulary
               (it shares that feature's table), last ``max_len`` kept
    label      a task's label (``kind`` binary / regression; ``positive``: the value that means 1 when
               the column holds strings, e.g. ``">50K"``)
    group      a user id for group AUC (kept aside, not a feature)
    ignore     read and dropped

Encoding is vectorised (pyarrow compute + numpy): a chunk of rows is encoded in a handful of
whole-column operations, never a Python loop over rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rankops.data.dataset import InMemoryDataset
from rankops.data.schema import Schema

ROLES = ("dense", "sparse", "multi_hot", "sequence", "label", "group", "ignore")
TRANSFORMS = ("none", "standard", "log", "log_standard", "minmax")
ENCODINGS = ("vocab", "hash")
FORMAT = "rankops-feature-map/1"


@dataclass
class Column:
    """One raw column: its ``role`` and how it is encoded (see the module docstring)."""

    name: str
    role: str
    # dense
    transform: str = "standard"
    fill: float = 0.0
    # sparse / multi_hot / sequence
    encoding: str = "vocab"
    min_freq: int = 1
    hash_size: int | None = None
    embedding_dim: int | None = None  # None: the map's default
    pooling: str = "sum"
    separator: str = "|"
    max_len: int = 50
    target: str | None = None  # sequence: the sparse feature whose vocabulary and table it uses
    # label
    kind: str = "binary"
    weight: float = 1.0
    positive: str | None = None

    def __post_init__(self):
        err = lambda m: ValueError(f"feature map: column {self.name!r}: {m}")  # noqa: E731
        if self.role not in ROLES:
            raise err(f"role must be one of {ROLES}, got {self.role!r}")
        if self.transform not in TRANSFORMS:
            raise err(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.encoding not in ENCODINGS:
            raise err(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.encoding == "hash" and self.role in ("sparse", "multi_hot") and not (self.hash_size or 0) >= 2:
            raise err(f"encoding 'hash' needs hash_size >= 2, got {self.hash_size}")
        if self.role == "sequence" and not self.target:
            raise err("a sequence needs target: the sparse feature whose ids it holds")
        if self.min_freq < 1:
            raise err(f"min_freq must be >= 1, got {self.min_freq}")

    @property
    def categorical(self) -> bool:
        return self.role in ("sparse", "multi_hot", "sequence")


def _as_columns(cols) -> list[Column]:
    out = []
    for c in cols:
        if isinstance(c, Column):
            out.append(c)
            continue
        try:
            out.append(Column(**c))
        except TypeError as e:
            raise ValueError(f"feature map: column {c.get('name', c)!r}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------
# vectorised helpers

_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def parse_numbers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values float64 (NaN where missing), missing mask, bad mask)`` of a numeric or string column;
    an empty string is missing, any other string that is not a number is bad."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        empty = pc.equal(arr, "").fill_null(True)
        clean = pc.if_else(empty, pa.scalar(None, arr.type), arr)
        try:  # the common case, every value a number: one cast, no regular expression
            vals = pc.cast(clean, pa.float64())
            vals_np = vals.to_numpy(zero_copy_only=False)
            missing = np.isnan(vals_np)
            if missing.sum() == (pc.sum(empty.cast(pa.int64())).as_py() or 0):  # no "nan" strings either
                return vals_np, missing, np.zeros(len(arr), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        s = pc.utf8_trim_whitespace(arr)
        missing = pc.or_kleene(pc.is_null(s), pc.equal(s, "")).fill_null(True)
        ok = pc.match_substring_regex(s, _NUMBER).fill_null(False)
        bad = pc.and_(pc.invert(missing), pc.invert(ok))
        clean = pc.if_else(ok, s, pa.scalar(None, pa.string()))
        vals = pc.cast(clean, pa.float64()).to_numpy(zero_copy_only=False)
        return vals, missing.to_numpy(zero_copy_only=False), bad.to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int8())
    vals = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    missing = np.isnan(vals)
    return vals, missing, np.zeros(len(vals), dtype=bool)


def as_strings(arr) -> pa.Array:
    """A column as strings (numbers too: a categorical may be stored as integers); nulls stay null."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr


def fnv1a(strings: pa.Array) -> np.ndarray:
    """64-bit FNV-1a of each string (uint64), vectorised over the rows: one numpy pass per byte
    position of the longest string. Stable across processes and machines (unlike ``hash()``)."""
    strings = pc.fill_null(as_strings(strings), "")
    n = len(strings)
    h = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    if n == 0:
        return h
    bufs = strings.buffers()
    otype = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=otype)[strings.offset:strings.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lens = np.diff(offsets)
    width = int(lens.max())
    # the bytes as a zero-padded [n, width] matrix: then one whole-column numpy step per byte position
    mat = np.zeros((n, width), dtype=np.uint8)
    total = int(offsets[-1] - offsets[0])
    if total:
        rows = np.repeat(np.arange(n), lens)
        cols = np.arange(total) - np.repeat(offsets[:-1] - offsets[0], lens)
        mat[rows, cols] = data[offsets[0]:offsets[-1]]
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for k in range(width):
            step = (h ^ mat[:, k].astype(np.uint64)) * prime
            h = np.where(lens > k, step, h)
    return h


def _split(arr: pa.Array, sep: str) -> tuple[pa.Array, np.ndarray]:
    """A string column of separated tokens -> (flat tokens, lengths [N]); empty / null -> length 0."""
    arr = pc.fill_null(as_strings(arr), "")
    lists = pc.split_pattern(arr, sep)
    flat = pc.list_flatten(lists)
    lens = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    # drop empty tokens ("" -> [""], "a||b" -> a, b)
    keep = pc.not_equal(flat, "").fill_null(False)
    if not pc.all(keep).as_py():
        keep_np = keep.to_numpy(zero_copy_only=False)
        row = np.repeat(np.arange(len(arr)), lens)
        lens = np.bincount(row[keep_np], minlength=len(arr)).astype(np.int64)
        flat = flat.filter(keep)
    return flat, lens


# ---------------------------------------------------------------------------------------------


@dataclass
class FeatureMap:
    """Raw columns -> encoded tensors and the model's ``Schema``; ``fit`` learns vocabularies and
    statistics from training data (in one streaming pass over chunks), ``encode`` applies them."""

    columns: list[Column]
    embedding_dim: int = 16
    vocab: dict[str, list[str]] = field(default_factory=dict)  # column -> values; id = position + 1
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # column -> mean, std, min, max, count
    fitted: bool = False
    rows_seen: int = 0

    def __post_init__(self):
        self.columns = _as_columns(self.columns)
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature map: columns named twice: {dup}")
        if not any(c.role == "label" for c in self.columns):
            raise ValueError("feature map: needs at least one column with role 'label'")
        if not any(c.role in ("sparse", "multi_hot") for c in self.columns):
            raise ValueError("feature map: needs at least one sparse or multi_hot column (every model embeds one)")
        by = {c.name: c for c in self.columns}
        for c in self.columns:
            if c.role == "sequence":
                t = by.get(c.target)
                if t is None or t.role not in ("sparse", "multi_hot"):
                    raise ValueError(f"feature map: sequence {c.name!r} targets {c.target!r}, which is not a sparse "
                                     f"column")
        self._lookup: dict[str, pa.Array] = {}

    # -----------------------------------------------------------------------------------------

    def by_role(self, *roles: str) -> list[Column]:
        return [c for c in self.columns if c.role in roles]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def raw_columns(self) -> list[str]:
        """The raw columns read from a file (``ignore`` ones are not read)."""
        return [c.name for c in self.columns if c.role != "ignore"]

    @property
    def label_columns(self) -> list[str]:
        return [c.name for c in self.by_role("label")]

    @property
    def group_column(self) -> str | None:
        g = self.by_role("group")
        return g[0].name if g else None

    def _vocab_owner(self, c: Column) -> Column:
        """The column whose vocabulary ``c`` uses (a sequence uses its target's)."""
        return self.column(c.target) if c.role == "sequence" else c

    def vocab_size(self, c: Column) -> int:
        c = self._vocab_owner(c)
        if c.encoding == "hash":
            return int(c.hash_size)
        return len(self.vocab.get(c.name, [])) + 1

    # -----------------------------------------------------------------------------------------
    # fitting

    def fit(self, chunks: Iterable[Mapping[str, Any]], progress=None) -> "FeatureMap":
        """Learn vocabularies and statistics from ``chunks`` (mappings column -> pyarrow array /
        numpy array, e.g. ``pa.RecordBatch``es or ``pa.Table``s), in one pass, memory bounded by the
        number of distinct values."""
        counts: dict[str, list[pa.Table]] = {}
        acc = {c.name: [0.0, 0.0, 0, math.inf, -math.inf] for c in self.by_role("dense")}  # sum, sumsq, n, min, max
        rows = 0
        for chunk in chunks:
            n = _num_rows(chunk)
            rows += n
            for c in self.by_role("dense"):
                v = self._dense_raw(chunk, c)
                a = acc[c.name]
                a[0] += float(v.sum())
                a[1] += float(np.square(v).sum())
                a[2] += v.size
                if v.size:
                    a[3] = min(a[3], float(v.min()))
                    a[4] = max(a[4], float(v.max()))
            for c in self.columns:
                if not c.categorical or self._vocab_owner(c).encoding != "vocab":
                    continue
                tokens = self._tokens(chunk, c)[0]
                vc = pc.value_counts(tokens)
                owner = self._vocab_owner(c).name
                parts = counts.setdefault(owner, [])
                parts.append(pa.table({"v": vc.field("values"), "n": vc.field("counts")}))
                if len(parts) > 8:  # bound the memory: merge the per-chunk counts
                    counts[owner] = [_merge_counts(parts)]
            if progress is not None:
                progress.update(rows)
        self.rows_seen = rows
        self.stats = {}
        for name, (s, ss, n, lo, hi) in acc.items():
            mean = s / n if n else 0.0
            var = max(ss / n - mean * mean, 0.0) if n else 0.0
            self.stats[name] = {"mean": mean, "std": math.sqrt(var), "min": lo if n else 0.0, "max": hi if n else 0.0,
                                "count": n}
        self.vocab = {}
        for c in self.columns:
            if c.categorical and c.role != "sequence" and c.encoding == "vocab":
                merged = _merge_counts(counts.get(c.name, []))
                keep = merged.filter(pc.greater_equal(merged["n"], c.min_freq))
                # most frequent first, ties by value: deterministic ids
                keep = keep.sort_by([("n", "descending"), ("v", "ascending")])
                self.vocab[c.name] = keep["v"].to_pylist()
        self.fitted = True
        self._lookup = {}
        return self

    # -----------------------------------------------------------------------------------------
    # encoding

    def _dense_raw(self, chunk, c: Column) -> np.ndarray:
        """The column after fill and the log part of the transform (what statistics are taken of)."""
        vals, missing, _ = parse_numbers(_get(chunk, c.name))
        vals = np.where(missing | np.isnan(vals), c.fill, vals)
        if c.transform in ("log", "log_standard"):
            vals = np.log1p(np.maximum(vals, 0.0))
        return vals

    def _dense(self, chunk, c: Column) -> np.ndarray:
        v = self._dense_raw(chunk, c)
        st = self.stats.get(c.name)
        if st is None:
            raise ValueError(f"feature map: not fitted (no statistics for {c.name!r})")
        if c.transform in ("standard", "log_standard"):
            v = (v - st["mean"]) / (st["std"] if st["std"] > 0 else 1.0)
        elif c.transform == "minmax":
            span = st["max"] - st["min"]
            v = (v - st["min"]) / (span if span > 0 else 1.0)
        return v.astype(np.float32)

    def _tokens(self, chunk, c: Column) -> tuple[pa.Array, np.ndarray | None]:
        """``(tokens, lengths or None for one-hot)`` of a categorical column."""
        arr = _get(chunk, c.name)
        if c.role == "sparse":
            return as_strings(arr), None
        return _split(arr, c.separator)

    def _ids(self, tokens: pa.Array, c: Column) -> np.ndarray:
        owner = self._vocab_owner(c)
        if owner.encoding == "hash":
            h = fnv1a(tokens)
            ids = (1 + h % np.uint64(owner.hash_size - 1)).astype(np.int64)
            nulls = pc.is_null(tokens).to_numpy(zero_copy_only=False) | \
                pc.equal(pc.fill_null(tokens, ""), "").to_numpy(zero_copy_only=False)
            ids[nulls] = 0
            return ids
        table = self._lookup.get(owner.name)
        if table is None:
            table = self._lookup[owner.name] = pa.array(self.vocab.get(owner.name, []), pa.string())
        idx = pc.index_in(tokens, value_set=table)
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    def labels(self, chunk) -> tuple[np.ndarray, np.ndarray]:
        """``(labels [N, T] float32, bad rows mask)``: a binary label must be 0/1 (or the
        ``positive`` string vs anything else); a regression label a number."""
        n = _num_rows(chunk)
        out = np.zeros((n, len(self.label_columns)), dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        for t, c in enumerate(self.by_role("label")):
            arr = _get(chunk, c.name)
            if c.positive is not None:
                s = as_strings(arr)
                out[:, t] = pc.equal(pc.utf8_trim_whitespace(s), c.positive).fill_null(False).to_numpy(
                    zero_copy_only=False)
                bad |= pc.is_null(s).to_numpy(zero_copy_only=False)
                continue
            v, missing, b = parse_numbers(arr)
            bad |= missing | b
            if c.kind == "binary":
                bad |= ~np.isin(np.nan_to_num(v, nan=0.5), (0.0, 1.0))
            out[:, t] = np.nan_to_num(v, nan=0.0)
        return out, bad

    def bad_rows(self, chunk) -> np.ndarray:
        """Rows whose numeric columns (dense or label) do not parse (missing dense values are fine)."""
        bad = self.labels(chunk)[1]
        for c in self.by_role("dense"):
            bad |= parse_numbers(_get(chunk, c.name))[2]
        return bad

    def encode(self, chunk, *, with_labels: bool = True) -> InMemoryDataset:
        """One chunk -> an ``InMemoryDataset`` of its rows (call ``bad_rows`` first and drop them:
        here an unparsable number becomes the fill value)."""
        if not self.fitted:
            raise ValueError("feature map: encode before fit")
        schema = self.schema()
        n = _num_rows(chunk)
        dense = [torch.from_numpy(self._dense(chunk, c)) for c in self.by_role("dense")]
        dense_t = torch.stack(dense, 1) if dense else torch.zeros(n, 0)
        sparse: dict[str, object] = {}
        seqs = {}
        for c in self.by_role("sparse", "multi_hot", "sequence"):
            tokens, lens = self._tokens(chunk, c)
            ids = torch.from_numpy(self._ids(tokens, c))
            if c.role == "sparse":
                sparse[c.name] = ids
            elif c.role == "multi_hot":
                off = torch.zeros(n + 1, dtype=torch.int64)
                off[1:] = torch.from_numpy(np.cumsum(lens))
                sparse[c.name] = (ids, off)
            else:
                seqs[c.name] = _pad_sequences(ids, torch.from_numpy(lens), c.max_len)
        labels = None
        if with_labels:
            missing = [c for c in self.label_columns if not _has(chunk, c)]
            if not missing:
                labels = torch.from_numpy(self.labels(chunk)[0])
        extra = {}
        g = self.group_column
        if g is not None and _has(chunk, g):
            extra["group"] = torch.from_numpy(fnv1a(_get(chunk, g)).view(np.int64))
        return InMemoryDataset(schema, dense_t, sparse, seqs, labels, extra)

    # -----------------------------------------------------------------------------------------

    def schema(self) -> Schema:
        """The model-facing schema: dense features, one sparse feature per sparse / multi-hot column
        (vocab_size = vocabulary + the OOV id, or hash_size), sequences, one task per label."""
        if not self.fitted:
            raise ValueError("feature map: schema() before fit")
        return Schema(
            dense=[{"name": c.name} for c in self.by_role("dense")],
            sparse=[{"name": c.name, "vocab_size": self.vocab_size(c),
                     "embedding_dim": c.embedding_dim or self.embedding_dim, "multi_hot": c.role == "multi_hot",
                     "pooling": c.pooling} for c in self.by_role("sparse", "multi_hot")],
            sequences=[{"name": c.name, "target": c.target, "max_len": c.max_len} for c in self.by_role("sequence")],
            tasks=[{"name": c.name, "kind": c.kind, "weight": c.weight} for c in self.by_role("label")])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "embedding_dim": self.embedding_dim, "rows_seen": self.rows_seen,
                "columns": [dataclasses.asdict(c) for c in self.columns], "stats": self.stats, "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureMap":
        if d.get("format") != FORMAT:
            raise ValueError(f"feature map: not a rankops feature map (format {d.get('format')!r}, want {FORMAT!r})")
        fm = cls(d["columns"], embedding_dim=d["embedding_dim"], vocab=d["vocab"], stats=d["stats"], fitted=True,
                 rows_seen=d.get("rows_seen", 0))
        return fm

    def save(self, path: str | Path) -> None:
        """JSON, written atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureMap":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature map: no file {str(path)!r}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"feature map: {str(path)!r} is not JSON ({e})") from None
        return cls.from_dict(d)


# ---------------------------------------------------------------------------------------------


def _num_rows(chunk) -> int:
    if hasattr(chunk, "num_rows"):
        return chunk.num_rows
    first = next(iter(chunk.values()))
    return len(first)


def _has(chunk, name: str) -> bool:
    if hasattr(chunk, "schema") and hasattr(chunk.schema, "names"):
        return name in chunk.schema.names
    return name in chunk


def _get(chunk, name: str):
    if hasattr(chunk, "schema") and hasattr(chunk.schema, "names"):
        if name not in chunk.schema.names:
            raise ValueError(f"data: no column {name!r} (columns: {chunk.schema.names})")
        return chunk.column(name)
    if name not in chunk:
        raise ValueError(f"data: no column {name!r} (columns: {sorted(chunk)})")
    v = chunk[name]
    return v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(v))


def _merge_counts(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({"v": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    t = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    g = t.group_by("v").aggregate([("n", "sum")])
    t = pa.table({"v": g["v"], "n": g["n_sum"]})
    return t.filter(pc.and_(pc.is_valid(t["v"]), pc.not_equal(t["v"], "")).fill_null(False))


def _pad_sequences(ids: torch.Tensor, lengths: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged ids -> ``(ids [N, max_len], lengths [N])`` keeping each row's last ``max_len`` ids."""
    n = lengths.numel()
    starts = torch.cumsum(lengths, 0) - lengths
    keep = lengths.clamp(max=max_len)
    out = torch.zeros(n, max_len, dtype=torch.int64)
    pos = torch.arange(max_len)[None, :]
    valid = pos < keep[:, None]
    src = (starts + lengths - keep)[:, None] + pos
    out[valid] = ids[src[valid]]
    return out, keep
