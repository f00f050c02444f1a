"""The data loader alone against the training step it feeds (does loading keep up with training?).

    python -m bench loader                 # Criteo-format rows as TSV, CSV and Parquet; B=4096
    python -m bench loader --quick

Every provider handles the same ``rows`` samples per call, so their times compare directly
(samples/s = rows / time):

- ``loader``: one pass of ``StreamingDataset`` over a file of ``rows`` Criteo-layout lines (13
  integers with the log transform and standardisation, 26 hashed categoricals, 100k rows per table):
  read, parse (pyarrow), validate numbers, encode, shuffle in chunk, cut into batches of B;
- ``in-memory``: the same rows already encoded, only cut into shuffled batches (InMemoryDataset);
- ``deepfm-step`` / ``dcnv2-step``: rows / B training steps of the zoo model on prepared batches
  (DNN 256-128, D=16, tables trained by the fused row-wise Adagrad, dense parameters by Adam).

``vs_<model>-step`` = the step's time / the loader's: above 1, the loader outruns training. The file
is in the page cache (the disk is not measured).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

import rankops.models as zoo
from rankops.data.criteo import INT_COLUMNS, NAMES, criteo_spec, write_criteo
from rankops.data.tabular import StreamingDataset, load_in_memory
from rankops.ops.embedding_bag import FusedOptimizer
from rankops.train.loop import Trainer, TrainConfig

HASH = 100_000


def _files(d: Path, rows: int) -> dict[str, Path]:
    tsv = d / "rows.tsv"
    write_criteo(tsv, rows, seed=0, vocab=50_000)
    types = {"label": pa.int64(), **{c: pa.string() for c in NAMES[1:]}}
    t = pcsv.read_csv(tsv, read_options=pcsv.ReadOptions(column_names=NAMES),
                      parse_options=pcsv.ParseOptions(delimiter="\t"), convert_options=pcsv.ConvertOptions(
                          column_types=types, strings_can_be_null=False))
    csv = d / "rows.csv"
    pcsv.write_csv(t, csv)
    typed = t
    for c in INT_COLUMNS:  # Parquet keeps the integers as (nullable) integers
        i = typed.schema.get_field_index(c)
        col = pa.compute.if_else(pa.compute.equal(t[c], ""), pa.scalar(None, pa.string()), t[c])
        typed = typed.set_column(i, c, pa.compute.cast(col, pa.int64()))
    parquet = d / "rows.parquet"
    pq.write_table(typed, parquet)
    return {"tsv": tsv, "csv": csv, "parquet": parquet}


def _spec(fmt: str):
    spec = criteo_spec(hash_size=HASH)
    if fmt != "tsv":
        spec.format, spec.header, spec.names = fmt, True, None
    return spec


def run(bench, args):
    rows = 4096 if bench.quick else 32768
    B = 4096
    with tempfile.TemporaryDirectory() as d:
        files = _files(Path(d), rows)
        encoded, _, fm, _ = load_in_memory(files["tsv"], _spec("tsv"))
        schema = fm.schema()
        batches = list(encoded.batches(B, shuffle=True))
        steps = {}
        for name in ("deepfm", "dcnv2"):
            torch.manual_seed(0)
            model = zoo.build(name, schema, embedding_optimizer=FusedOptimizer("rowwise_adagrad", 0.01))
            trainer = Trainer(model, TrainConfig(batch_size=B, progress=False))

            def step(trainer=trainer):
                for b in batches:
                    trainer.step(b)

            steps[f"{name}-step"] = step
        bench.baselines = tuple(steps)
        bench.note(f"{rows} Criteo-layout rows per call ({B} per batch, {len(batches)} batches); 26 hashed tables "
                   f"x {HASH} rows x D=16; {torch.get_num_threads()} torch threads")
        for fmt in bench.grid(format=["tsv", "csv", "parquet"]):
            fmt = fmt["format"]
            ds = StreamingDataset(files[fmt], _spec(fmt), fm, chunk_rows=rows)

            def load(ds=ds):
                n = 0
                for b in ds.batches(B, shuffle=True):
                    n += b.size
                assert n == rows, n

            providers = {"loader": load}
            if fmt == "tsv":
                providers["in-memory"] = lambda: [b.size for b in encoded.batches(B, shuffle=True)]
            providers.update(steps)
            bench.run(op="loader", case=dict(format=fmt, rows=rows, B=B), providers=providers, inputs=(),
                      mode="step")
