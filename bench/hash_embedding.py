"""The hash_embedding family: insert and lookup throughput (ids/s) of the id map against a Python dict
and the hashing trick (``id % rows``), the whole remap + embedding-bag lookup against a plain hashed
``nn.EmbeddingBag``, and memory per id (``python -m bench hash_embedding``).

Ids: N raw 64-bit ids (random int64 values of V distinct entities drawn with Zipf(1.05) popularity,
so a batch repeats its head ids, as a log does). Map: ``rankops.nn.IdTable`` of ``capacity = V``
rows and its default 2V slots (rounded up to a power of two).

Rows (all timed side by side in one run, median of ``reps`` calls, each on state prepared outside
the timing: an empty map for inserts, a filled one for lookups):
  insert  cpp / reference ``hash_insert`` into an empty map; the Python dict's ``setdefault`` loop
          (``ids.tolist()`` included: what a Python remapper pays); ``IdTable.insert``: the whole
          training step of the table (probe, counts, admission, rows), into a new table (every id
          new, its buffers touched for the first time) and into one that knows the ids (a steady
          training step); ``id % rows`` for scale.
  lookup  cpp ``hash_lookup`` of present ids; the dict's ``[d[i] for i in ids]``; ``IdTable.lookup``.
  bag     B one-id bags, D=16: ``nn.EmbeddingBag`` over ``id % rows`` vs the same bag over
          ``IdTable.lookup`` rows (serving), and over ``IdTable.insert`` rows (training's remap).
The reference (one id at a time in Python) runs on a slice of the ids (its rate does not depend on N).
Memory per id: the map's buffers over its capacity; the dict's measured growth per entry
(``sys.getsizeof`` of the dict plus its int objects); the hashing trick keeps no map.

One thread (torch.set_num_threads(1)) for every row. Writes bench/results/hash_embedding.{md,json}; --quick: smaller N, under bench/results/tmp/.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import rankops
from bench.common import cpu_model
from rankops.nn.hash_embedding import IdTable
from rankops.ops.hash_embedding import EMPTY, hash_insert, hash_lookup

OWN_RESULTS = True  # bench/__main__.py: run() writes its own tables


def _zipf_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(-2 ** 63 + 1, 2 ** 63 - 1, (vocab,), generator=g)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** 1.05
    return raw[torch.multinomial(p, n, replacement=True, generator=g)]


def _time(fn, prepare=lambda: None, reps: int = 5) -> float:
    """Median seconds of ``fn(prepare())`` over ``reps`` calls (prepare untimed), after one warm-up."""
    fn(prepare())
    times = []
    for _ in range(reps):
        state = prepare()
        t0 = time.perf_counter()
        fn(state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _dict_bytes_per_id(ids: torch.Tensor) -> float:
    """Bytes a Python {id: row} dict adds per distinct id: the table plus its key and value ints."""
    d = {}
    for i in ids.tolist():
        d.setdefault(i, len(d))
    size = sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())
    return size / len(d)


def measure(n: int, vocab: int, B: int, D: int = 16, reps: int = 5, ref_n: int = 20_000) -> dict:
    ids = _zipf_ids(n, vocab)
    distinct = ids.unique().numel()
    table = IdTable(vocab)
    S = table.num_slots
    rows_out: list[dict] = []

    def row(op, provider, seconds, count):
        rows_out.append(dict(op=op, provider=provider, N=count, ms=seconds * 1e3, ids_per_s=count / seconds))

    empty = lambda: torch.full((S,), EMPTY, dtype=torch.int64)  # noqa: E731
    with rankops.use_backend("cpp"):
        row("insert", "cpp hash_insert", _time(lambda k: hash_insert(k, ids), empty, reps), n)
        filled = empty()
        hash_insert(filled, ids)
        row("lookup", "cpp hash_lookup", _time(lambda _: hash_lookup(filled, ids), reps=reps), n)
    small = ids[:ref_n]
    with rankops.use_backend("reference"):
        row("insert", "reference hash_insert", _time(lambda k: hash_insert(k, small), empty, 1), ref_n)
        row("lookup", "reference hash_lookup", _time(lambda _: hash_lookup(filled, small), reps=1), ref_n)

    def dict_insert(_):
        d = {}
        return [d.setdefault(i, len(d)) for i in ids.tolist()]

    row("insert", "python dict", _time(dict_insert, reps=max(1, reps // 2)), n)
    d = {}
    for i in ids.tolist():
        d.setdefault(i, len(d))
    row("lookup", "python dict", _time(lambda _: torch.tensor([d[i] for i in ids.tolist()]), reps=max(1, reps // 2)), n)
    rows = vocab + 1
    row("insert", "id % rows (hashing trick)", _time(lambda _: torch.remainder(ids, rows), reps=reps), n)
    row("lookup", "id % rows (hashing trick)", _time(lambda _: torch.remainder(ids, rows), reps=reps), n)

    fresh = lambda: IdTable(vocab)  # noqa: E731
    row("insert", "IdTable.insert, new table (whole step)", _time(lambda t: t.insert(ids), fresh, reps), n)
    served = IdTable(vocab)
    served.insert(ids)
    row("insert", "IdTable.insert, ids known (whole step)", _time(lambda _: served.insert(ids), reps=reps), n)
    row("lookup", "IdTable.lookup", _time(lambda _: served.lookup(ids), reps=reps), n)

    # the remap in front of the embedding lookup: B one-id bags
    bag = nn.EmbeddingBag(rows, D, mode="sum")
    q = ids[:B]
    off = torch.arange(B)
    with torch.no_grad():
        row("bag", "nn.EmbeddingBag(id % rows)", _time(lambda _: bag(torch.remainder(q, rows), off), reps=reps * 4), B)
        row("bag", "nn.EmbeddingBag(IdTable.lookup)", _time(lambda _: bag(served.lookup(q), off), reps=reps * 4), B)
        row("bag", "nn.EmbeddingBag(IdTable.insert)", _time(lambda _: bag(served.insert(q), off), reps=reps * 4), B)

    map_bytes = sum(b.numel() * b.element_size() for b in table.buffers())
    memory = [dict(map="IdTable", bytes_per_id=map_bytes / vocab, note=f"{S} slots for {vocab} rows: keys int64, "
                   "row int32, count int32, last step int32, free-row stack int32"),
              dict(map="python dict", bytes_per_id=_dict_bytes_per_id(ids[:200_000]), note="table + int objects"),
              dict(map="id % rows", bytes_per_id=0.0, note="no map: ids share rows")]
    # collisions of the hashing trick on these ids, with the same rows
    uniq = ids.unique()
    per_row = torch.bincount(torch.remainder(uniq, rows), minlength=rows)
    shared = int((per_row[torch.remainder(uniq, rows)] > 1).sum())
    return dict(N=n, vocab=vocab, distinct=distinct, slots=S, B=B, D=D, rows=rows_out, memory=memory,
                hashed_ids_sharing_a_row=shared, threads=torch.get_num_threads())


def write(result: dict, out: Path, wall: float) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    base = {r["provider"]: r for r in result["rows"] if r["op"] != "bag"}
    lines = ["# hash_embedding: the collisionless id map (CPU)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {result['threads']} thread(s) of {cpu_model()} "
             f"(a shared 2-core machine: ratios within this run, not absolute times, are the result); "
             f"wall {wall:.0f} s. `python -m bench hash_embedding`.", "",
             f"{result['N']:,} raw 64-bit ids of {result['vocab']:,} entities (Zipf 1.05; {result['distinct']:,} "
             f"distinct in the batch), map of {result['vocab']:,} rows in {result['slots']:,} slots.", "",
             "| op | provider | N | ms | ids/s | vs python dict |", "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ref = base.get("python dict") if r["op"] == "insert" else None
        if r["op"] == "lookup":
            ref = next(x for x in result["rows"] if x["op"] == "lookup" and x["provider"] == "python dict")
        vs = f"{r['ids_per_s'] / ref['ids_per_s']:.1f}x" if ref is not None else ""
        lines.append(f"| {r['op']} | {r['provider']} | {r['N']:,} | {r['ms']:.3g} | {r['ids_per_s']:.3g} | {vs} |")
    bags = [r for r in result["rows"] if r["op"] == "bag"]
    if bags:
        lines += ["", f"Remap + embedding lookup, B={result['B']} one-id bags, D={result['D']} (ratio to the plain "
                      "hashed bag):", ""]
        for r in bags:
            lines.append(f"- {r['provider']}: {r['ms']:.3g} ms ({bags[0]['ms'] / r['ms']:.2f}x the hashed bag's speed)")
    lines += ["", "Memory per id:", "", "| map | bytes per id | what |", "|---|---:|---|"]
    lines += [f"| {m['map']} | {m['bytes_per_id']:.1f} | {m['note']} |" for m in result["memory"]]
    lines += ["", f"The hashing trick with the same {result['vocab'] + 1:,} rows puts "
                  f"{result['hashed_ids_sharing_a_row']:,} of the {result['distinct']:,} distinct ids on a row "
                  "shared with another id; the IdTable puts none (tests/nn/test_hash_embedding.py).",
              "", "GPU (Triton kernel): unmeasured here (no GPU lent); tested under TRITON_INTERPRET=1 only."]
    md, js = out / "hash_embedding.md", out / "hash_embedding.json"
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps(result, indent=1) + "\n")
    return {"md": md, "json": js}


def run(bench, args) -> dict[str, Path]:
    t0 = time.perf_counter()
    # one thread: on the shared 2-core machine a second OpenMP thread mostly waits for a busy core
    # (a 1M-id insert took 51 ms on 2 threads, 28 ms on 1); the Python baselines use one anyway
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if getattr(args, "quick", False):
        result = measure(n=100_000, vocab=50_000, B=4096, reps=2, ref_n=5000)
        out = Path(args.out) if getattr(args, "out", None) else Path(__file__).parent / "results" / "tmp"
    else:
        result = measure(n=1_000_000, vocab=500_000, B=4096)
        out = Path(args.out) if getattr(args, "out", None) else Path(__file__).parent / "results"
    torch.set_num_threads(threads)
    return write(result, out, time.perf_counter() - t0)
