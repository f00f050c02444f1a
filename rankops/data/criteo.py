"""Criteo's TSV layout (the Display Advertising Challenge / Terabyte logs): one line per impression,
``label \\t I1..I13 \\t C1..C26``, no header; integers may be empty (missing), categoricals are
8-digit hexadecimal hashes or empty.

The integers get the usual log transform, ``log1p(max(x, 0))`` (missing -> 0), then are standardised
on the training rows (``transform="log"`` keeps the log alone). The categoricals are hashed into
``hash_size`` rows each (no pass over the data needed), or, with ``hash_size=None``, given a vocabulary
of the values seen at least ``min_freq`` times in the training rows, everything else to the OOV id 0.
Files are streamed in chunks (``rankops.data.tabular.StreamingDataset``): a file larger than memory
trains in bounded memory.
"""

from __future__ import annotations

from rankops.data.feature_map import Column
from rankops.data.tabular import DataSpec

NUM_INT, NUM_CAT = 13, 26
INT_COLUMNS = [f"I{i}" for i in range(1, NUM_INT + 1)]
CAT_COLUMNS = [f"C{i}" for i in range(1, NUM_CAT + 1)]
NAMES = ["label"] + INT_COLUMNS + CAT_COLUMNS


def criteo_spec(*, hash_size: int | None = None, min_freq: int = 2, embedding_dim: int = 16,
                transform: str = "log_standard") -> DataSpec:
    """The data spec of a Criteo TSV file: hashing into ``hash_size`` rows per field when given,
    else a vocabulary per field with a ``min_freq`` threshold."""
    enc = dict(encoding="hash", hash_size=hash_size) if hash_size else dict(encoding="vocab", min_freq=min_freq)
    cols = [Column("label", "label")]
    cols += [Column(c, "dense", transform=transform) for c in INT_COLUMNS]
    cols += [Column(c, "sparse", **enc) for c in CAT_COLUMNS]
    return DataSpec(cols, format="criteo", header=False, names=NAMES, embedding_dim=embedding_dim)


def write_criteo(path, rows: int, seed: int = 0, *, vocab: int = 1000, missing: float = 0.1) -> None:
    """A Criteo-format file of ``rows`` synthetic lines (for tests and benchmarks; no real Criteo
    sample is shipped anywhere we can read). The label depends on I1 and C1 so a model can learn."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ints = rng.poisson(3.0, (rows, NUM_INT)) * rng.integers(1, 50, (1, NUM_INT))
    cats = rng.zipf(1.3, (rows, NUM_CAT)) % vocab
    logit = 0.02 * (ints[:, 0] - ints[:, 0].mean()) + np.where(cats[:, 0] % 3 == 0, 1.0, -1.0)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    hexes = np.char.mod("%08x", (cats * 2654435761 + np.arange(NUM_CAT) * 97) % (1 << 32))
    int_s = ints.astype(str)
    int_s[rng.random(int_s.shape) < missing] = ""
    hexes[rng.random(hexes.shape) < missing / 2] = ""
    table = np.concatenate([label[:, None].astype(str), int_s, hexes], 1)
    with open(path, "w") as f:
        f.write("\n".join("\t".join(r) for r in table))
        f.write("\n")


__all__ = ["NAMES", "criteo_spec", "write_criteo"]
