"""Readers for CSV / TSV / Parquet files described by a data spec (each column's role), streamed in
chunks of rows in bounded memory, with malformed lines counted and reported by line number.

A data spec (YAML) names the file's layout and each column's role; everything but ``name`` and
``role`` has a default (see ``rankops.data.feature_map.Column``)::

    format: csv                # csv | tsv | parquet | criteo (default: from the file's suffix)
    delimiter: ","             # csv / tsv
    header: true               # false: give names
    names: [...]               # the columns in file order, when there is no header
    embedding_dim: 16          # every sparse feature's, unless a column says otherwise
    columns:
      - {name: click, role: label}
      - {name: price, role: dense, transform: log_standard}
      - {name: user_id, role: sparse, min_freq: 2}
      - {name: user_id_g, role: group, source: user_id}      # not yet: a group column is its own column
      - {name: tags, role: multi_hot, separator: "|", pooling: mean}
      - {name: hist_items, role: sequence, target: item_id, separator: "|", max_len: 20}
      - {name: item_id, role: sparse, encoding: hash, hash_size: 100000}

or, shorter, one list per role: ``dense: [price, age]``, ``sparse: [user_id, item_id]``,
``label: [click]``, ``group: [uid]`` (entries may be names or mappings as above).

Malformed lines (a wrong number of fields, an unparsable number in a dense or label column) are
skipped and counted (``Reader.bad``: the count per reason and the first line numbers), or raise
``DataError`` naming the file and the line with ``strict=True``. Parsing is pyarrow's (C++,
multi-threaded); validation and encoding are whole-column operations.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rankops.data.dataset import InMemoryDataset, global_batches, global_slice
from rankops.data.feature_map import ROLES, Column, FeatureMap, parse_numbers

FORMATS = ("csv", "tsv", "parquet", "criteo")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}


class DataError(ValueError):
    """Bad data (a malformed line with ``strict``, a column the spec names that the file lacks)."""


@dataclass
class DataSpec:
    """A file's layout and its columns' roles (the ``--schema`` YAML of the command line)."""

    columns: list[Column]
    format: str | None = None
    delimiter: str | None = None
    header: bool = True
    names: list[str] | None = None
    embedding_dim: int = 16

    def __post_init__(self):
        self.columns = [c if isinstance(c, Column) else Column(**c) for c in self.columns]
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"data spec: format must be one of {FORMATS}, got {self.format!r}")
        if not self.header and not self.names and self.format not in ("parquet", "criteo"):
            raise ValueError("data spec: header: false needs names: the columns in file order")

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        d = dict(d)
        cols = []
        for c in d.pop("columns", None) or []:
            if not isinstance(c, dict) or "name" not in c or "role" not in c:
                raise ValueError(f"data spec: each entry of columns needs name and role, got {c!r}")
            cols.append(_column(c))
        for role in [k for k in list(d) if k in ROLES]:  # in the file's order
            entries = d.pop(role)
            if entries is None:
                continue
            if isinstance(entries, (str, dict)):
                entries = [entries]
            for e in entries:
                if isinstance(e, str):
                    cols.append(_column({"name": e, "role": role}))
                elif isinstance(e, dict) and len(e) == 1 and isinstance(next(iter(e.values())), dict):
                    (name, opts), = e.items()
                    cols.append(_column({"name": name, "role": role, **opts}))
                elif isinstance(e, dict):
                    cols.append(_column({"role": role, **e}))
                else:
                    raise ValueError(f"data spec: {role}: entries are names or mappings, got {e!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"columns"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"data spec: unknown keys {unknown}; expected columns, {', '.join(ROLES)}, "
                             f"{', '.join(sorted(known))}")
        if not cols:
            raise ValueError("data spec: names no columns (give columns: [...] or dense: / sparse: / label: lists)")
        return cls(cols, **d)

    @classmethod
    def load(cls, path: str | Path) -> "DataSpec":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"data spec: no file {str(path)!r}")
        import yaml

        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"data spec: {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise ValueError(f"data spec: {str(path)!r} must hold a mapping (columns: [...])")
        if set(d) <= {"dense", "sparse", "sequences", "tasks"} and "tasks" in d:
            raise ValueError(f"data spec: {str(path)!r} looks like a model schema (dense / sparse / sequences / "
                             f"tasks); --schema wants the data's columns and their roles (columns: [{{name, role}}])")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return {"format": self.format, "delimiter": self.delimiter, "header": self.header, "names": self.names,
                "embedding_dim": self.embedding_dim, "columns": [dataclasses.asdict(c) for c in self.columns]}

    def feature_map(self) -> FeatureMap:
        return FeatureMap(self.columns, embedding_dim=self.embedding_dim)

    def format_of(self, path: str | Path) -> str:
        if self.format:
            return self.format
        fmt = SUFFIXES.get(Path(path).suffix.lower())
        if fmt is None:
            raise ValueError(f"data: cannot tell the format of {str(path)!r} from its suffix; set format: csv / tsv "
                             f"/ parquet in the spec")
        return fmt


def _column(d: dict) -> Column:
    try:
        return Column(**d)
    except TypeError as e:
        raise ValueError(f"data spec: column {d.get('name')!r}: {e}") from None


# ---------------------------------------------------------------------------------------------


@dataclass
class BadLines:
    """Malformed lines met while reading: how many per reason, and the first line numbers."""

    counts: dict[str, int] = field(default_factory=dict)
    lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), the first `keep`
    keep: int = 20

    def add(self, line: int | None, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.lines) < self.keep:
            self.lines.append((line if line is not None else -1, reason))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, path) -> str:
        if not self.total:
            return ""
        reasons = ", ".join(f"{n} {r}" for r, n in self.counts.items())
        where = ", ".join(str(line) for line, _ in self.lines[:10])
        more = "..." if self.total > 10 else ""
        return f"{path}: skipped {self.total} malformed line(s) ({reasons}); lines {where}{more}"

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": self.counts, "first_lines": self.lines}


class Reader:
    """One file read in chunks of about ``chunk_rows`` valid rows (``pa.Table``s holding the spec's
    columns; strings for CSV / TSV). ``require_labels=False`` (prediction) lets label columns be absent."""

    def __init__(self, path: str | Path, spec: DataSpec, *, chunk_rows: int = 65536, strict: bool = False,
                 require_labels: bool = True, block_size: int = 1 << 22):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data: no file {str(path)!r}")
        self.spec, self.chunk_rows, self.strict, self.block_size = spec, chunk_rows, strict, block_size
        self.format = spec.format_of(self.path)
        self.bad = BadLines()
        self.file_columns = self._file_columns()
        wanted = [c for c in spec.columns if c.role != "ignore"]
        missing = [c.name for c in wanted if c.name not in self.file_columns and (c.role != "label" or require_labels)]
        if missing:
            raise DataError(f"data: {str(path)!r} has no column(s) {missing} named in the schema (the file has "
                            f"{_short(self.file_columns)})")
        self.columns = [c.name for c in wanted if c.name in self.file_columns]
        self.has_labels = all(c.name in self.file_columns for c in spec.columns if c.role == "label")
        self._numeric = [c for c in wanted if c.role in ("dense", "label") and c.name in self.columns]

    # -----------------------------------------------------------------------------------------

    def _delimiter(self) -> str:
        if self.spec.delimiter:
            return self.spec.delimiter
        return "\t" if self.format in ("tsv", "criteo") else ","

    def _file_columns(self) -> list[str]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                return pq.ParquetFile(self.path).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"data: {str(self.path)!r} is not a Parquet file ({e})") from None
        if self.spec.names:
            return list(self.spec.names)
        if not self.spec.header:
            raise DataError("data: the spec has header: false but no names")
        with open(self.path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        if not first:
            raise DataError(f"data: {str(self.path)!r} is empty (no header line)")
        return [n.strip().strip('"') for n in first.split(self._delimiter())]

    def _raw_batches(self) -> Iterator[pa.RecordBatch]:
        """The file's rows as pyarrow parsed them (malformed lines skipped and recorded).

        CSV / TSV: the file is read in blocks of ``block_size`` bytes cut at a line end and each block
        is parsed on its own, so memory holds one block (pyarrow's own streaming reader reads far
        ahead: 20 MB of a 30 MB file on its first batch). Quoted values spanning lines are not
        supported."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self.path)
            yield from pf.iter_batches(batch_size=self.chunk_rows, columns=self.columns)
            return
        import pyarrow.csv as pcsv

        line0 = [1]  # physical line number of the block's first line

        def on_invalid(row):
            line = None if row.number is None else line0[0] + row.number - 1
            reason = f"{row.actual_columns} fields instead of {row.expected_columns}"
            if self.strict:  # an exception raised here is swallowed by pyarrow: stop it with "error"
                self._strict_error = f"data: {self.path}:{line}: malformed line ({reason}): {row.text[:60]!r}"
                return "error"
            self._skipped.append(line)
            self.bad.add(line, "wrong field count")
            return "skip"

        # one thread per block: pyarrow numbers a malformed row only when parsing serially
        read = pcsv.ReadOptions(column_names=self.file_columns, use_threads=False, block_size=1 << 30)
        parse = pcsv.ParseOptions(delimiter=self._delimiter(), invalid_row_handler=on_invalid,
                                  quote_char='"' if self.format == "csv" else False, ignore_empty_lines=False)
        conv = pcsv.ConvertOptions(column_types={n: pa.string() for n in self.columns}, include_columns=self.columns,
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
        with open(self.path, "rb") as f:
            if self.spec.header:
                f.readline()
                line0[0] = 2
            carry = b""
            while True:
                data = f.read(self.block_size)
                buf = carry + data
                if data:
                    cut = buf.rfind(b"\n") + 1
                    if cut == 0:  # a line longer than the block: read on
                        carry = buf
                        continue
                    block, carry = buf[:cut], buf[cut:]
                else:
                    block, carry = buf, b""
                if block.strip():
                    try:
                        t = pcsv.read_csv(pa.BufferReader(block), read_options=read, parse_options=parse,
                                          convert_options=conv)
                    except pa.ArrowInvalid as e:
                        if self._strict_error:
                            raise DataError(self._strict_error) from None
                        raise DataError(f"data: cannot parse {str(self.path)!r} near line {line0[0]}: "
                                        f"{str(e).splitlines()[0]}") from None
                    yield from t.to_batches()
                line0[0] += block.count(b"\n") + (0 if block.endswith(b"\n") or not block else 1)
                if not data:
                    return

    def chunks(self) -> Iterator[pa.Table]:
        """The file's valid rows, in file order, in tables of about ``chunk_rows`` rows."""
        self.bad = BadLines()
        self._skipped: list[int] = []
        self._strict_error = None
        first_line = 2 if self.spec.header and self.format != "parquet" else 1
        good_rows = 0  # rows pyarrow returned so far (valid + bad values)
        pending: list[pa.Table] = []
        pending_rows = 0
        for b in self._raw_batches():
            t = pa.Table.from_batches([b])
            bad = self._bad_values(t)
            if bad is not None:  # the numbers parsed once, here: the columns become float64 (NaN: missing)
                for name, vals in bad[2].items():
                    t = t.set_column(t.schema.get_field_index(name), name, pa.array(vals, pa.float64()))
            if bad is not None and bad[0].any():
                mask, reasons, _ = bad
                rows = np.nonzero(mask)[0]
                lines = self._line_numbers(good_rows + rows, first_line)
                for r, line in zip(rows, lines):
                    if self.strict:
                        raise DataError(f"data: {self.path}:{line}: {reasons[r]}")
                    self.bad.add(int(line), "unparsable number")
                t = t.filter(pa.array(~mask))
            good_rows += b.num_rows
            pending.append(t)
            pending_rows += t.num_rows
            while pending_rows >= self.chunk_rows:
                whole = pa.concat_tables(pending)
                yield whole.slice(0, self.chunk_rows)
                rest = whole.slice(self.chunk_rows)
                pending, pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        if pending_rows:
            yield pa.concat_tables(pending)

    def read_all(self) -> pa.Table:
        parts = list(self.chunks())
        if not parts:
            return pa.table({n: pa.array([], pa.string()) for n in self.columns})
        return pa.concat_tables(parts).combine_chunks()

    def _line_numbers(self, rows: np.ndarray, first_line: int) -> np.ndarray:
        """Physical line numbers of rows (0-based among the rows pyarrow returned), given the lines
        it skipped as malformed."""
        if self.format == "parquet":
            return rows + 1
        s = np.sort(np.asarray([x for x in self._skipped if x is not None], dtype=np.int64))
        k = np.searchsorted(s - first_line - np.arange(len(s)), rows, side="right")
        return first_line + rows + k

    def _bad_values(self, t: pa.Table):
        if not self._numeric:
            return None
        mask = np.zeros(t.num_rows, dtype=bool)
        reasons: dict[int, str] = {}
        parsed = {}
        for c in self._numeric:
            col = t.column(c.name)
            if c.role == "label" and c.positive is not None:
                continue
            vals, missing, bad = parse_numbers(col)
            parsed[c.name] = vals
            if c.role == "label":
                bad = bad | missing
                if c.kind == "binary":
                    bad |= ~np.isin(np.nan_to_num(vals, nan=0.0), (0.0, 1.0))
            if bad.any():
                for r in np.nonzero(bad & ~mask)[0][:1000]:
                    v = col[int(r)].as_py()
                    reasons[int(r)] = (f"column {c.name!r}: {v!r} is not a number" if c.role == "dense" else
                                       f"label {c.name!r}: {v!r} is not " + ("0 or 1" if c.kind == "binary" else
                                                                             "a number"))
                mask |= bad
        for r in np.nonzero(mask)[0]:
            reasons.setdefault(int(r), "unparsable number")
        return mask, reasons, parsed


def _short(names: list[str], n: int = 12) -> str:
    return str(names) if len(names) <= n else str(names[:n])[:-1] + f", ... ({len(names)} in all)]"


# ---------------------------------------------------------------------------------------------
# data sets


def _holdout(n: int, row0: int, fraction: float, seed: int) -> np.ndarray:
    """Which of rows ``row0 .. row0+n-1`` are held out for validation: a seeded hash of the row
    number below ``fraction`` (streamable: no pass over the file needed)."""
    r = np.arange(row0, row0 + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (r + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _prefetch(items, depth: int):
    """Iterate ``items`` in a background thread, ``depth`` ahead (pyarrow and numpy release the GIL
    while they parse and encode); its exceptions are raised here, in order. Closing the consumer
    stops the thread."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for x in items:
                if not put(x):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001  handed to the consumer
            put(_Failed(e))

    thread = threading.Thread(target=work, name="rankops-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, _Failed):
                raise x.exc
            yield x
    finally:
        stop.set()


def part_chunks(chunks: Iterator[pa.Table], part: tuple[float, str, int] | None) -> Iterator[pa.Table]:
    """The rows of ``chunks`` in ``part = (fraction, "train" | "valid", seed)`` of the hash split
    (all rows when None)."""
    row0 = 0
    for t in chunks:
        n = t.num_rows
        if part is not None:
            frac, which, seed = part
            held = _holdout(n, row0, frac, seed)
            t = t.filter(pa.array(held if which == "valid" else ~held))
        row0 += n
        yield t


class StreamingDataset:
    """A file read chunk by chunk (the ``Dataset`` protocol): memory holds one chunk of raw rows
    and its encoded batches, whatever the file's size.

    ``part``: ``(fraction, "train" | "valid", seed)`` keeps only the rows of a seeded hash split.
    Shuffling permutes the rows inside each chunk (seeded by seed, epoch and chunk), so an epoch's
    order, and a resume's ``start``, are reproducible. ``shard(rank, world)`` makes it one rank's
    part under torchrun.
    """

    def __init__(self, path, spec: DataSpec, feature_map: FeatureMap, *, chunk_rows: int = 65536, strict=False,
                 part: tuple[float, str, int] | None = None, require_labels: bool = True, prefetch: int = 2,
                 rows: int | None = None):
        self.path, self.spec, self.feature_map, self.chunk_rows = Path(path), spec, feature_map, chunk_rows
        self.prefetch = prefetch  # encoded chunks read ahead by a background thread (0: none)
        self.strict, self.part, self.require_labels = strict, part, require_labels
        self.schema = feature_map.schema()
        self.reader = Reader(path, spec, chunk_rows=chunk_rows, strict=strict, require_labels=require_labels)
        self._rows = rows  # known after a first pass, or given by one (the feature map's fit)
        self._groups: torch.Tensor | None = None
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> "StreamingDataset":
        """Make this rank ``rank``'s part of ``world``: every rank reads and parses the whole file in
        the same order, cuts it into global batches of ``world x batch_size`` rows and encodes only its
        own contiguous slice of each (``global_slice``), so the ranks together train on the batches
        one process would (a last one cut to a multiple of ``world`` rows), in equal shares."""
        self.rank, self.world = rank, world
        return self

    def raw_chunks(self) -> Iterator[pa.Table]:
        return part_chunks(self.reader.chunks(), self.part)

    def num_batches(self, batch_size: int) -> int | None:
        return None if self._rows is None else global_batches(self._rows, batch_size * self.world, self.world)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, start: int = 0):
        blocks = self._encoded(batch_size * self.world, shuffle, seed, epoch, start)
        if self.prefetch:  # read, parse and encode the next chunks while the caller trains on this one
            blocks = _prefetch(blocks, self.prefetch)
        for ds, skip in blocks:
            yield from ds.batches(batch_size, start=skip)

    def _encoded(self, batch_size: int, shuffle: bool, seed: int, epoch: int, start: int):
        """``(encoded rows, batches of them to skip)`` per block of whole batches, in pass order."""
        buf: pa.Table | None = None
        emitted = rows = 0
        for i, t in enumerate(self.raw_chunks()):
            rows += t.num_rows
            if shuffle and t.num_rows:
                g = torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + i)
                t = t.take(pa.array(torch.randperm(t.num_rows, generator=g).numpy()))
            buf = t if buf is None else pa.concat_tables([buf, t])
            full = buf.num_rows // batch_size
            if full:
                head = buf.slice(0, full * batch_size)
                buf = buf.slice(full * batch_size)
                block = self._encode(head, batch_size, emitted, start)
                if block is not None:
                    yield block
                emitted += full
        if buf is not None and buf.num_rows:
            block = self._encode(buf, batch_size, emitted, start)
            if block is not None:
                yield block
        self._rows = rows

    def _encode(self, table: pa.Table, batch_size: int, emitted: int, start: int):
        n = -(-table.num_rows // batch_size)
        if emitted + n <= start:  # all skipped by a resume: no need to encode
            return None
        if self.world > 1:  # batch_size is the global batch here: keep this rank's slice of each
            table = table.take(pa.array(global_slice(table.num_rows, batch_size, self.rank, self.world).numpy()))
            if not table.num_rows:
                return None
        ds = self.feature_map.encode(table.combine_chunks(), with_labels=self.require_labels)
        return ds, max(start - emitted, 0)

    def groups(self) -> torch.Tensor | None:
        """The group (user) id of every row, in order (one pass), or None without a group column."""
        g = self.feature_map.group_column
        if g is None:
            return None
        if self._groups is None:
            from rankops.data.feature_map import fnv1a

            parts = [torch.from_numpy(fnv1a(t.column(g)).view(np.int64)) for t in self.raw_chunks()]
            self._groups = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        return self._groups


def fit_feature_map(fm: FeatureMap, chunks, progress=None) -> FeatureMap:
    return fm.fit(chunks, progress=progress)


def load_in_memory(path, spec: DataSpec, feature_map: FeatureMap | None = None, *, strict: bool = False,
                   valid_fraction: float = 0.0, seed: int = 0, require_labels: bool = True,
                   chunk_rows: int = 65536):
    """Read a whole file: ``(train, valid or None, feature_map, reader)``; the feature map is fitted
    on the training rows when not given."""
    reader = Reader(path, spec, chunk_rows=chunk_rows, strict=strict, require_labels=require_labels)
    table = reader.read_all()
    if table.num_rows == 0:
        raise DataError(f"data: {str(path)!r} has no valid rows" +
                        (f" ({reader.bad.summary(path)})" if reader.bad.total else ""))
    train_t, valid_t = table, None
    if valid_fraction > 0:
        held = _holdout(table.num_rows, 0, valid_fraction, seed)
        train_t, valid_t = table.filter(pa.array(~held)), table.filter(pa.array(held))
    if feature_map is None:
        feature_map = spec.feature_map().fit([train_t])
    with_labels = require_labels or reader.has_labels
    train = feature_map.encode(train_t, with_labels=with_labels)
    valid = feature_map.encode(valid_t, with_labels=with_labels) if valid_t is not None else None
    return train, valid, feature_map, reader


def file_size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


__all__ = ["BadLines", "DataError", "DataSpec", "Reader", "StreamingDataset", "load_in_memory"]
_ = InMemoryDataset
