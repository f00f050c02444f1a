"""The feature schema: which features a model reads, as plain data.

A schema names the dense features (scalars or vectors), the sparse ones (an id, or a bag of ids,
looked up in an embedding table; two features may share a table, e.g. ``item`` and a behaviour
sequence of items), the behaviour sequences (each matched against a target sparse feature, whose
table it shares) and the tasks (one label column each). Models are built from it
(``rankops.models.build(name, schema)``), it is saved with every model, and it round-trips through
YAML / JSON (``Schema.load`` / ``Schema.save``), so a user writes it once, by hand or by a reader.

Example (YAML)::

    dense:    [{name: age}, {name: user_vec, dim: 32}]
    sparse:   [{name: user, vocab_size: 100000, embedding_dim: 16},
               {name: item, vocab_size: 50000, embedding_dim: 16},
               {name: tags, vocab_size: 1000, embedding_dim: 16, multi_hot: true, pooling: mean}]
    sequences: [{name: hist_item, target: item, max_len: 50}]   # (item_len: N for lists of ids per position)
    tasks:    [{name: click}, {name: watch_time, kind: regression, weight: 0.5}]
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POOLINGS = ("sum", "mean", "max")
TASK_KINDS = ("binary", "regression")


@dataclass
class DenseFeature:
    """A real-valued feature: ``dim`` numbers per sample (1 for a scalar, more for a precomputed vector)."""

    name: str
    dim: int = 1


@dataclass
class SparseFeature:
    """Ids looked up in an embedding table of ``vocab_size`` rows of ``embedding_dim``.

    ``multi_hot``: a bag of ids per sample, pooled by ``pooling``; else exactly one id.
    ``table``: the table's name (default: the feature's); features naming one table share it.
    """

    name: str
    vocab_size: int
    embedding_dim: int = 16
    multi_hot: bool = False
    pooling: str = "sum"
    table: str | None = None

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass
class SequenceFeature:
    """A user's behaviour sequence: up to ``max_len`` ids of the same kind as the sparse feature
    ``target`` (the candidate it is matched against), looked up in ``target``'s table.

    ``item_len``: each position is itself a list of up to ``item_len`` ids (the title tokens of a
    clicked news, whose candidate is the multi-hot ``target`` of its own tokens): ids
    ``[B, max_len, item_len]``, padded with id 0 after each list's ids (MIND's convention: token 0
    is padding). None (the default): one id per position, ``[B, max_len]``."""

    name: str
    target: str
    max_len: int = 50
    item_len: int | None = None


@dataclass
class Task:
    """One label column: ``binary`` (sigmoid cross-entropy) or ``regression`` (squared error);
    ``weight`` scales its loss in the multi-task sum."""

    name: str
    kind: str = "binary"
    weight: float = 1.0


@dataclass
class Schema:
    dense: list[DenseFeature] = field(default_factory=list)
    sparse: list[SparseFeature] = field(default_factory=list)
    sequences: list[SequenceFeature] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=lambda: [Task("label")])

    def __post_init__(self):
        # accept plain dicts (from YAML / JSON) as well as the dataclasses
        self.dense = [f if isinstance(f, DenseFeature) else DenseFeature(**f) for f in self.dense]
        self.sparse = [f if isinstance(f, SparseFeature) else SparseFeature(**f) for f in self.sparse]
        self.sequences = [f if isinstance(f, SequenceFeature) else SequenceFeature(**f) for f in self.sequences]
        self.tasks = [t if isinstance(t, Task) else Task(**t) for t in self.tasks]
        self.validate()

    # -----------------------------------------------------------------------------------------
    # checks

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistency."""
        names = [f.name for f in self.dense + self.sparse + self.sequences]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"schema: feature names must be unique; repeated: {dup}")
        if not self.tasks:
            raise ValueError("schema: needs at least one task")
        tnames = [t.name for t in self.tasks]
        if len(set(tnames)) != len(tnames):
            raise ValueError(f"schema: task names must be unique, got {tnames}")
        for f in self.dense:
            if f.dim < 1:
                raise ValueError(f"schema: dense feature {f.name!r} needs dim >= 1, got {f.dim}")
        for f in self.sparse:
            if f.vocab_size < 1 or f.embedding_dim < 1:
                raise ValueError(f"schema: sparse feature {f.name!r} needs vocab_size and embedding_dim >= 1, got "
                                 f"{f.vocab_size} and {f.embedding_dim}")
            if f.pooling not in POOLINGS:
                raise ValueError(f"schema: sparse feature {f.name!r}: pooling must be one of {POOLINGS}, got "
                                 f"{f.pooling!r}")
        tables: dict[str, SparseFeature] = {}
        for f in self.sparse:
            first = tables.setdefault(f.table_name, f)
            if (first.vocab_size, first.embedding_dim) != (f.vocab_size, f.embedding_dim):
                raise ValueError(f"schema: features {first.name!r} and {f.name!r} share table {f.table_name!r} but "
                                 f"differ in size: {first.vocab_size}x{first.embedding_dim} vs "
                                 f"{f.vocab_size}x{f.embedding_dim}")
        sparse = {f.name for f in self.sparse}
        for s in self.sequences:
            if s.target not in sparse:
                raise ValueError(f"schema: sequence {s.name!r} targets {s.target!r}, which is not a sparse feature "
                                 f"(sparse features: {sorted(sparse)})")
            if s.max_len < 1:
                raise ValueError(f"schema: sequence {s.name!r} needs max_len >= 1, got {s.max_len}")
            if s.item_len is not None:
                if s.item_len < 1:
                    raise ValueError(f"schema: sequence {s.name!r} needs item_len >= 1 (or none), got {s.item_len}")
                if not self.feature(s.target).multi_hot:
                    raise ValueError(f"schema: sequence {s.name!r} holds lists of ids (item_len {s.item_len}); its "
                                     f"target {s.target!r} must be a multi-hot feature (the candidate's list)")
        for t in self.tasks:
            if t.kind not in TASK_KINDS:
                raise ValueError(f"schema: task {t.name!r}: kind must be one of {TASK_KINDS}, got {t.kind!r}")
            if t.weight < 0:
                raise ValueError(f"schema: task {t.name!r} has a negative weight {t.weight}")

    # -----------------------------------------------------------------------------------------
    # views the models use

    @property
    def dense_dim(self) -> int:
        return sum(f.dim for f in self.dense)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(f"schema: no sparse feature {name!r}")

    def embedding_dims(self) -> set[int]:
        return {f.embedding_dim for f in self.sparse}

    def subset(self, *, tasks: list[str] | None = None, drop: list[str] = ()) -> "Schema":
        """A copy with only the named tasks and without the features in ``drop``."""
        d = self.to_dict()
        d["dense"] = [f for f in d["dense"] if f["name"] not in drop]
        d["sparse"] = [f for f in d["sparse"] if f["name"] not in drop]
        d["sequences"] = [f for f in d["sequences"] if f["name"] not in drop and f["target"] not in drop]
        if tasks is not None:
            d["tasks"] = [t for t in d["tasks"] if t["name"] in tasks]
        return Schema.from_dict(d)

    # -----------------------------------------------------------------------------------------
    # serialisation

    def to_dict(self) -> dict[str, Any]:
        return {"dense": [dataclasses.asdict(f) for f in self.dense],
                "sparse": [dataclasses.asdict(f) for f in self.sparse],
                "sequences": [dataclasses.asdict(f) for f in self.sequences],
                "tasks": [dataclasses.asdict(t) for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        unknown = set(d) - {"dense", "sparse", "sequences", "tasks"}
        if unknown:
            raise ValueError(f"schema: unknown sections {sorted(unknown)}; expected dense, sparse, sequences, tasks")
        try:
            return cls(dense=list(d.get("dense") or []), sparse=list(d.get("sparse") or []),
                       sequences=list(d.get("sequences") or []), tasks=list(d.get("tasks") or [{"name": "label"}]))
        except TypeError as e:  # an unknown or missing field in one entry
            raise ValueError(f"schema: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write as YAML (``.yaml`` / ``.yml``) or JSON (anything else)."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Schema":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"schema: no file {str(path)!r}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"schema: {str(path)!r} must hold a mapping with dense / sparse / sequences / tasks")
        return cls.from_dict(d)
