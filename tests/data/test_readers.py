"""Readers and the feature map: Criteo TSV, CSV / Parquet with a data spec, malformed lines, streaming."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rankops.data.criteo import NAMES, criteo_spec, write_criteo
from rankops.data.feature_map import Column, FeatureMap, fnv1a
from rankops.data.tabular import DataError, DataSpec, Reader, StreamingDataset, load_in_memory

ROOT = Path(__file__).resolve().parents[2]


def _criteo_with_bad_lines(path, rows=600):
    write_criteo(path, rows, seed=1)
    lines = path.read_text().splitlines()
    lines[4] = "1\t2\t3"  # line 5: 3 fields
    f = lines[9].split("\t")
    f[2] = "12x"  # line 10: I2 is not a number
    lines[9] = "\t".join(f)
    f = lines[19].split("\t")
    f[0] = "2"  # line 20: a label that is not 0 / 1
    lines[19] = "\t".join(f)
    lines[29] = lines[29] + "\textra"  # line 30: 41 fields
    path.write_text("\n".join(lines) + "\n")
    return [5, 10, 20, 30]


def test_criteo_malformed_lines_counted_with_line_numbers(tmp_path):
    p = tmp_path / "day.tsv"
    bad = _criteo_with_bad_lines(p)
    spec = criteo_spec(hash_size=100)
    r = Reader(p, spec, chunk_rows=64)  # several chunks and pyarrow blocks
    r.block_size = 4096
    table = r.read_all()
    assert table.num_rows == 600 - 4
    assert r.bad.total == 4
    assert sorted(line for line, _ in r.bad.lines) == bad
    assert r.bad.counts == {"wrong field count": 2, "unparsable number": 2}
    assert "skipped 4 malformed line(s)" in r.bad.summary(p)


@pytest.mark.parametrize("line", [5, 10])
def test_criteo_strict_fails_with_line_number(tmp_path, line):
    p = tmp_path / "day.tsv"
    write_criteo(p, 50, seed=2)
    lines = p.read_text().splitlines()
    if line == 5:
        lines[4] = "0\t1"
    else:
        f = lines[9].split("\t")
        f[5] = "nan?"
        lines[9] = "\t".join(f)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"day.tsv:{line}: "):
        Reader(p, criteo_spec(hash_size=10), strict=True).read_all()


def test_criteo_encoding_log_transform_hash_and_vocab(tmp_path):
    p = tmp_path / "d.tsv"
    rows = ["1\t5\t\t0\t" + "\t".join(["7"] * 10) + "\t" + "\t".join(["68fd1e64"] * 25 + [""]),
            "0\t-3\t2\t1\t" + "\t".join(["0"] * 10) + "\t" + "\t".join(["80e26c9b"] * 25 + ["aaaaaaaa"]),
            "0\t\t2\t1\t" + "\t".join(["0"] * 10) + "\t" + "\t".join(["68fd1e64"] * 25 + ["aaaaaaaa"])]
    p.write_text("\n".join(rows) + "\n")
    spec = criteo_spec(hash_size=1000, transform="log")
    train, _, fm, _ = load_in_memory(p, spec)
    # I1: log1p(max(x, 0)), missing -> 0; I2 missing -> 0
    torch.testing.assert_close(train.dense[:, 0], torch.tensor([math.log1p(5), 0.0, 0.0]))
    torch.testing.assert_close(train.dense[:, 1], torch.tensor([0.0, math.log1p(2), math.log1p(2)]))
    c1 = train.sparse["C1"]
    assert c1[0] == c1[2] != c1[1] and 1 <= int(c1.min()) and int(c1.max()) < 1000
    assert int(train.sparse["C26"][0]) == 0  # empty -> the missing id
    h = int(fnv1a(pa.array(["68fd1e64"]))[0])
    assert int(c1[0]) == 1 + h % 999
    # a vocabulary with a threshold: values seen once fall to the OOV id 0
    vspec = criteo_spec(min_freq=2, transform="log_standard")
    train, _, fm, _ = load_in_memory(p, vspec)
    assert fm.vocab["C1"] == ["68fd1e64"] and fm.vocab["C26"] == ["aaaaaaaa"]
    assert train.sparse["C1"].tolist() == [1, 0, 1]
    assert train.sparse["C26"].tolist() == [0, 1, 1]
    assert fm.schema().feature("C1").vocab_size == 2
    torch.testing.assert_close(train.dense[:, 0].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)


CSV_SPEC = """
format: csv
embedding_dim: 8
columns:
  - {name: click, role: label}
  - {name: price, role: dense, transform: log_standard}
  - {name: age, role: dense, transform: minmax, fill: 30}
  - {name: item, role: sparse}
  - {name: city, role: sparse, encoding: hash, hash_size: 64}
  - {name: tags, role: multi_hot, separator: "|", pooling: mean}
  - {name: hist, role: sequence, target: item, separator: " ", max_len: 3}
  - {name: uid, role: group}
  - {name: note, role: ignore}
"""


def _tabular(n=200, seed=0):
    rng = np.random.default_rng(seed)
    items = np.array([f"i{k}" for k in range(20)])
    return {
        "click": rng.integers(0, 2, n),
        "price": rng.exponential(10, n).round(2),
        "age": rng.integers(18, 80, n).astype(float),
        "item": items[rng.integers(0, 20, n)],
        "city": np.array([f"c{k}" for k in rng.integers(0, 9, n)]),
        "tags": np.array(["|".join(f"t{k}" for k in rng.integers(0, 6, rng.integers(0, 4))) for _ in range(n)]),
        "hist": np.array([" ".join(items[rng.integers(0, 20, rng.integers(0, 6))]) for _ in range(n)]),
        "uid": rng.integers(0, 15, n),
        "note": np.array(["x"] * n),
    }


def write_tabular(tmp_path, n=200, seed=0, name="data"):
    cols = _tabular(n, seed)
    spec = tmp_path / "spec.yaml"
    spec.write_text(CSV_SPEC)
    t = pa.table(cols)
    csv = tmp_path / f"{name}.csv"
    import pyarrow.csv as pcsv

    pcsv.write_csv(t, csv)
    parquet = tmp_path / f"{name}.parquet"
    pq.write_table(t, parquet)
    return csv, parquet, spec, cols


def test_csv_and_parquet_encode_alike(tmp_path):
    csv, parquet, spec_path, cols = write_tabular(tmp_path)
    spec = DataSpec.load(spec_path)
    a, _, fm, _ = load_in_memory(csv, spec)
    pspec = DataSpec.load(spec_path)
    pspec.format = "parquet"
    b, _, _, _ = load_in_memory(parquet, pspec, fm)
    schema = fm.schema()
    assert [f.name for f in schema.dense] == ["price", "age"]
    assert [(f.name, f.multi_hot) for f in schema.sparse] == [("item", False), ("city", False), ("tags", True)]
    assert schema.sequences[0].target == "item" and schema.tasks[0].name == "click"
    assert schema.feature("item").vocab_size == 21 and schema.feature("city").vocab_size == 64
    torch.testing.assert_close(a.dense, b.dense)
    for k in a.sparse:
        av, bv = a.sparse[k], b.sparse[k]
        if isinstance(av, tuple):
            assert torch.equal(av[0], bv[0]) and torch.equal(av[1], bv[1])
        else:
            assert torch.equal(av, bv)
    assert torch.equal(a.sequences["hist"][0], b.sequences["hist"][0])
    assert torch.equal(a.extra["group"], b.extra["group"])
    # sequences keep the last max_len ids, in the item vocabulary
    row = next(i for i, h in enumerate(cols["hist"]) if len(h.split()) > 3)
    ids, lens = a.sequences["hist"]
    want = [fm.vocab["item"].index(x) + 1 for x in cols["hist"][row].split()[-3:]]
    assert lens[row] == 3 and ids[row].tolist() == want
    # multi-hot: a bag per row
    v, off = a.sparse["tags"]
    assert (off[1:] - off[:-1]).tolist() == [len([t for t in s.split("|") if t]) for s in cols["tags"]]
    # minmax of age in [0, 1]
    assert float(a.dense[:, 1].min()) == 0.0 and float(a.dense[:, 1].max()) == 1.0
    next(a.batches(64)).validate(schema)


def test_feature_map_json_round_trip(tmp_path):
    csv, _, spec_path, _ = write_tabular(tmp_path)
    spec = DataSpec.load(spec_path)
    a, _, fm, _ = load_in_memory(csv, spec)
    fm.save(tmp_path / "fm.json")
    fm2 = FeatureMap.load(tmp_path / "fm.json")
    assert json.loads((tmp_path / "fm.json").read_text())["format"] == "rankops-feature-map/1"
    assert fm2.schema().to_dict() == fm.schema().to_dict()
    b, _, _, _ = load_in_memory(csv, spec, fm2)
    assert torch.equal(a.dense, b.dense) and torch.equal(a.sparse["item"], b.sparse["item"])


def test_spec_shorthand_and_errors(tmp_path):
    s = DataSpec.from_dict({"label": ["y"], "dense": ["a", {"b": {"transform": "log"}}], "sparse": ["c"]})
    assert [(c.name, c.role) for c in s.columns] == [("y", "label"), ("a", "dense"), ("b", "dense"), ("c", "sparse")]
    assert s.columns[2].transform == "log"
    with pytest.raises(ValueError, match="role must be one of"):
        DataSpec.from_dict({"columns": [{"name": "x", "role": "feature"}]})
    with pytest.raises(ValueError, match="unknown keys"):
        DataSpec.from_dict({"label": ["y"], "sparse": ["c"], "colums": []})
    with pytest.raises(ValueError, match="needs at least one column with role 'label'"):
        DataSpec.from_dict({"sparse": ["c"]}).feature_map()
    csv, _, spec_path, _ = write_tabular(tmp_path)
    bad = DataSpec.from_dict({"label": ["click"], "sparse": ["item", "colour"]})
    with pytest.raises(DataError, match=r"no column\(s\) \['colour'\]"):
        Reader(csv, bad)


def test_streaming_matches_in_memory_and_resumes(tmp_path):
    p = tmp_path / "d.tsv"
    write_criteo(p, 1000, seed=3)
    spec = criteo_spec(hash_size=50)
    full, _, fm, _ = load_in_memory(p, spec)
    ds = StreamingDataset(p, spec, fm, chunk_rows=128)
    assert ds.num_batches(100) is None
    got = list(ds.batches(100))
    assert ds.num_batches(100) == 10 and [b.size for b in got] == [100] * 10
    torch.testing.assert_close(torch.cat([b.dense for b in got]), full.dense)
    # shuffled: a permutation of the rows, the same for the same (seed, epoch), another for another epoch
    a = torch.cat([b.dense for b in ds.batches(100, shuffle=True, seed=1, epoch=0)])
    b = torch.cat([b.dense for b in ds.batches(100, shuffle=True, seed=1, epoch=0)])
    c = torch.cat([b.dense for b in ds.batches(100, shuffle=True, seed=1, epoch=1)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a.sort(0).values, full.dense.sort(0).values)
    # start skips exactly that many batches of the same pass
    tail = torch.cat([b.dense for b in ds.batches(100, shuffle=True, seed=1, epoch=0, start=7)])
    assert torch.equal(tail, a[700:])
    # the hash split: disjoint, together all rows
    tr = StreamingDataset(p, spec, fm, chunk_rows=128, part=(0.2, "train", 0))
    va = StreamingDataset(p, spec, fm, chunk_rows=128, part=(0.2, "valid", 0))
    ntr = sum(b.size for b in tr.batches(64))
    nva = sum(b.size for b in va.batches(64))
    assert ntr + nva == 1000 and 130 < nva < 270


MEMORY_PROBE = """
import gc, sys
import rankops  # noqa: F401
from rankops.data.criteo import criteo_spec
from rankops.data.tabular import Reader, StreamingDataset, load_in_memory

spec = criteo_spec(hash_size=1000)


def peak_mb():  # the peak resident set since the last reset
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024


def stream(path):
    fm = spec.feature_map().fit(Reader(path, spec, chunk_rows=4000, block_size=1 << 20).chunks())
    ds = StreamingDataset(path, spec, fm, chunk_rows=4000)
    ds.reader.block_size = 1 << 20
    return sum(b.size for b in ds.batches(1024, shuffle=True))


def whole(path):
    return len(load_in_memory(path, spec)[0])


run = stream if sys.argv[1] == "stream" else whole
run(sys.argv[3])  # warm up on a small file: imports, allocator and thread pools
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
base = peak_mb()
n = run(sys.argv[2])
print(n, peak_mb() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
def test_streaming_bounded_memory(tmp_path):
    """Criteo files 25x and 50x the chunk size: streaming one (fit + a shuffled pass) grows the peak RSS
    by what a few chunks take, the same for the file twice as large, and by far less than loading it whole."""
    big, bigger, small = tmp_path / "big.tsv", tmp_path / "bigger.tsv", tmp_path / "small.tsv"
    write_criteo(big, 100_000, seed=4)
    write_criteo(bigger, 200_000, seed=7)
    write_criteo(small, 4000, seed=5)
    size_mb = big.stat().st_size / 2**20
    out = {}
    for mode, path in (("stream", big), ("stream", bigger), ("whole", big)):
        r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, str(path), str(small)], capture_output=True,
                           text=True, cwd=ROOT, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr[-2000:]
        n, grew = r.stdout.split()
        out[mode, path.name] = (int(n), float(grew))
    stream, stream2, whole = out["stream", "big.tsv"], out["stream", "bigger.tsv"], out["whole", "big.tsv"]
    assert stream[0] == whole[0] == 100_000 and stream2[0] == 200_000
    print(f"file {size_mb:.0f} MB: peak RSS growth streaming {stream[1]:.0f} MB (twice the file: {stream2[1]:.0f} MB), "
          f"whole {whole[1]:.0f} MB")
    assert stream2[1] < 1.25 * stream[1] + 4  # bounded: twice the rows, not twice the memory
    assert stream[1] < 0.35 * whole[1]


def test_column_checks():
    with pytest.raises(ValueError, match="hash_size"):
        Column("c", "sparse", encoding="hash")
    with pytest.raises(ValueError, match="target"):
        Column("s", "sequence")
    assert NAMES[:3] == ["label", "I1", "I2"] and len(NAMES) == 40


def test_streaming_prefetch_errors_and_early_stop(tmp_path):
    """The background reader hands its errors to the consumer and stops when the consumer does."""
    p = tmp_path / "d.tsv"
    write_criteo(p, 900, seed=6)
    lines = p.read_text().splitlines()
    lines[700] = "1\t2"  # line 701, in the third chunk
    p.write_text("\n".join(lines) + "\n")
    spec = criteo_spec(hash_size=50)
    fm = spec.feature_map().fit(Reader(p, spec).chunks())
    strict = StreamingDataset(p, spec, fm, chunk_rows=300, strict=True)
    strict.reader.block_size = 8192  # about 50 lines a block: the error comes after some chunks
    seen = 0
    with pytest.raises(DataError, match="d.tsv:701: malformed line"):
        for b in strict.batches(100):
            seen += b.size
    assert seen >= 300  # the chunks before the bad line were served first
    lazy = StreamingDataset(p, spec, fm, chunk_rows=100)
    it = lazy.batches(50)
    next(it)
    it.close()  # stops the reader thread: nothing hangs, a new pass starts afresh
    assert sum(b.size for b in lazy.batches(50)) == 899
    assert [b.size for b in StreamingDataset(p, spec, fm, chunk_rows=100, prefetch=0).batches(450)] == [450, 449]


def test_one_hot_batches_are_one_gather_and_follow_column_edits():
    """InMemoryDataset.take stacks one-hot columns once ([F, N]) and gathers a batch's ids in one call:
    the same KJT as column by column, and a column written in place or replaced afterwards is seen."""
    import torch

    from rankops.data.dataset import InMemoryDataset
    from rankops.data.schema import Schema

    schema = Schema.from_dict({"sparse": [{"name": "a", "vocab_size": 10}, {"name": "b", "vocab_size": 7}],
                               "tasks": [{"name": "c"}]})
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 10, (40,), generator=g), torch.randint(0, 7, (40,), generator=g)
    d = InMemoryDataset(schema, torch.zeros(40, 0), {"a": a.clone(), "b": b.clone()}, labels=torch.zeros(40, 1))
    rows = torch.tensor([5, 0, 39, 5])
    kjt = d.take(rows).sparse
    assert torch.equal(kjt.values(), torch.cat([a[rows], b[rows]])) and torch.equal(kjt.lengths(), torch.ones(8).long())
    d.sparse["a"][0] = 9  # in place, through the column (a view of the stacked block)
    assert d.take(rows).sparse.values()[1] == 9
    d.sparse["b"] = torch.zeros(40, dtype=torch.int64)  # replaced
    assert torch.equal(d.take(rows).sparse.values()[4:], torch.zeros(4).long())
