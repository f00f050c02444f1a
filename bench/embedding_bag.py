"""Table-batched embedding bags: rankops against a loop of F.embedding_bag per table and against
FBGEMM's table-batched embedding bags (TBE), side by side in one run.

    python -m bench.embedding_bag            # CPU default grid (below)
    python -m bench.embedding_bag --full     # the issue's whole grid (needs ~15 GB for 1M-row tables at D=128)
    python -m bench.embedding_bag --quick    # one case

Grid (issue #3): 26 tables of R in {100k, 1M} rows, D in {16, 64, 128}, pooling L in {1, 20}
ids per bag (exactly L; one-hot when L=1), B in {4096, 16384}, fp32, sum pooling, ids uniform.
CPU default: R=100k, B=4096 (2-core machines).

Modes and providers:
  fwd:        rankops (cpp: one batched_embedding_bag call), loop (26 x F.embedding_bag + cat),
              fbgemm (SplitTableBatchedEmbeddingBagsCodegen on CPU);
  fwd+bwd+upd rankops (fused_batched_embedding_bag, row-wise Adagrad in the backward),
              fbgemm (EXACT_ROWWISE_ADAGRAD, its update fused in the backward too),
              loop (26 x F.embedding_bag(sparse=True) + torch.optim.Adagrad on the sparse grads;
              elementwise Adagrad, torch has no row-wise one).
Bytes (what the mode must move; GB/s = bytes / median time):
  fwd:  nnz * (D * 4 + idx bytes) rows and ids read, B * T * D * 4 output written
  upd:  fwd + grad_out read (B T D 4) + each unique row read and written (2 U D 4) + its
        row-wise state read and written (2 U 4)
Timing: the providers of a case run interleaved, round after round (a noisy neighbour slows them
alike), each call on one of 3 pre-drawn index sets in turn; the row holds the median and the
20th/80th percentiles of the per-call times (time.perf_counter), after warm-up calls. The loop
with torch's sparse Adagrad (seconds a call) gets 3 rounds only.

This file times by itself: the shared harness (bench/common.py, ``Bench``) had not landed on main
when it was written; its rows carry the same fields (op, case, mode, provider, ms, GB/s).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import rankops
from rankops.ops.embedding_bag import FusedOptimizer, fused_batched_embedding_bag

RESULTS = Path(__file__).resolve().parent / "results"
T = 26
# time.perf_counter (wall) by default; --cpu-time: one thread and time.process_time, which a busy
# shared machine distorts less (time spent descheduled is not counted)
CLOCK = time.perf_counter


def make_inputs(R, D, L, B, sets, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx_sets = [torch.randint(0, R, (T * B * L,), generator=g) for _ in range(sets)]
    off = torch.arange(0, T * B * L + 1, L, dtype=torch.int64)
    return idx_sets, off


def fbgemm_tbe(R, D, optimizer: str | None):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (ComputeDevice, EmbeddingLocation,
                                                                        SplitTableBatchedEmbeddingBagsCodegen)

    opt = EmbOptimType.EXACT_ROWWISE_ADAGRAD if optimizer == "rowwise_adagrad" else EmbOptimType.EXACT_SGD
    return SplitTableBatchedEmbeddingBagsCodegen([(R, D, EmbeddingLocation.HOST, ComputeDevice.CPU)] * T,
                                                 optimizer=opt, learning_rate=0.01, eps=1e-8,
                                                 pooling_mode=PoolingMode.SUM)


def time_interleaved(fns: dict, rounds: int, warmup: int = 2, max_rounds: dict | None = None) -> dict:
    """{name: (median, p20, p80) ms} with providers interleaved per round; ``max_rounds`` caps the
    rounds of a provider (the torch loop with a sparse optimizer takes seconds a call)."""
    max_rounds = max_rounds or {}
    for k, fn in fns.items():
        for i in range(min(warmup, max_rounds.get(k, warmup))):
            fn(i)
    samples = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in fns.items():
            if r >= max_rounds.get(k, rounds):
                continue
            t0 = CLOCK()
            fn(r)
            samples[k].append((CLOCK() - t0) * 1e3)
    out = {}
    for k, s in samples.items():
        q = statistics.quantiles(s, n=10) if len(s) > 1 else [s[0]] * 9
        out[k] = (statistics.median(s), q[1], q[7])
    return out


def bench_case(R, D, L, B, rounds, sets=3, fwd_only=False):
    rows = []
    idx_sets, off = make_inputs(R, D, L, B, sets)
    toff = torch.arange(0, (T + 1) * R, R, dtype=torch.int64)
    weights = torch.empty(T * R, D).uniform_(-0.01, 0.01)
    tables = [weights[t * R:(t + 1) * R] for t in range(T)]
    nnz = T * B * L
    # per-table slices for the loop (views: no copies inside the timed call)
    per_table = [[(idx[t * B * L:(t + 1) * B * L], off[:B + 1] * 1) for t in range(T)] for idx in idx_sets]
    case = dict(T=T, R=R, D=D, L=L, B=B)
    fwd_bytes = nnz * (D * 4 + 8) + B * T * D * 4

    # ---- forward
    tbe = fbgemm_tbe(R, D, None)
    with torch.no_grad():
        for t, w in enumerate(tbe.split_embedding_weights()):
            w.copy_(tables[t])

    def ours_fwd(i):
        with torch.no_grad(), rankops.use_backend("cpp"):
            return rankops.batched_embedding_bag(weights, toff, idx_sets[i % sets], off)

    def loop_fwd(i):
        with torch.no_grad():
            return torch.cat([F.embedding_bag(ix, tables[t], o, include_last_offset=True)
                              for t, (ix, o) in enumerate(per_table[i % sets])], 1)

    def fbgemm_fwd(i):
        with torch.no_grad():
            return tbe(idx_sets[i % sets], off)

    want = loop_fwd(0)
    err = {"rankops": (ours_fwd(0).reshape(B, -1) - want).abs().max().item(),
           "fbgemm": (fbgemm_fwd(0) - want).abs().max().item(), "loop": 0.0}
    res = time_interleaved({"rankops": ours_fwd, "loop": loop_fwd, "fbgemm": fbgemm_fwd}, rounds)
    for k, (med, p20, p80) in res.items():
        rows.append(dict(op="batched_embedding_bag", **case, mode="fwd", provider=k, ms=med, p20=p20, p80=p80,
                         gbps=fwd_bytes / med / 1e6, max_abs_err=err[k]))
    del tbe
    if fwd_only:
        return rows

    # ---- forward + backward + row-wise Adagrad update (weights change every call: timing only)
    U = sum(int(torch.unique(ix[t * B * L:(t + 1) * B * L]).numel()) for ix in idx_sets[:1] for t in range(T))
    upd_bytes = fwd_bytes + B * T * D * 4 + 2 * U * D * 4 + 2 * U * 4
    grad = torch.randn(B, T, D)
    opt = FusedOptimizer("rowwise_adagrad", lr=0.01, eps=1e-8)
    state = opt.init_state(weights)
    tbe = fbgemm_tbe(R, D, "rowwise_adagrad")
    loop_w = [w.clone().requires_grad_() for w in tables]
    loop_opt = torch.optim.Adagrad(loop_w, lr=0.01, eps=1e-8)

    def ours_upd(i):
        with rankops.use_backend("cpp"):
            out = fused_batched_embedding_bag(weights, state, toff, idx_sets[i % sets], off, optimizer=opt)
            out.backward(grad)

    def fbgemm_upd(i):
        tbe(idx_sets[i % sets], off).backward(grad.view(B, T * D))

    def loop_upd(i):
        out = torch.cat([F.embedding_bag(ix, loop_w[t], o, include_last_offset=True, sparse=True)
                         for t, (ix, o) in enumerate(per_table[i % sets])], 1)
        out.backward(grad.view(B, T * D))
        loop_opt.step()
        loop_opt.zero_grad(set_to_none=True)

    res = time_interleaved({"rankops": ours_upd, "fbgemm": fbgemm_upd, "loop": loop_upd}, rounds, warmup=1,
                           max_rounds={"loop": 3})
    for k, (med, p20, p80) in res.items():
        rows.append(dict(op="batched_embedding_bag", **case, mode="fwd+bwd+rowwise_adagrad", provider=k, ms=med,
                         p20=p20, p80=p80, gbps=upd_bytes / med / 1e6, max_abs_err=float("nan")))
    return rows


def save(rows, out_dir: Path, note: str, suffix: str = "") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "cpu-" + "-".join(platform.processor().split()) if platform.processor() else "cpu"
    csv_path = out_dir / f"embedding_bag-{tag}{suffix}.csv"
    md_path = out_dir / f"embedding_bag-{tag}{suffix}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# embedding_bag on CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads), "
             f"{dt.datetime.now():%Y-%m-%d %H:%M}",
             "", note, "", "| R | D | L | B | mode | rankops ms | loop ms | fbgemm ms | rankops GB/s | "
             "vs loop | vs fbgemm |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["R"], r["D"], r["L"], r["B"], r["mode"]) for r in rows})
    for key in keys:
        by = {r["provider"]: r for r in rows if (r["R"], r["D"], r["L"], r["B"], r["mode"]) == key}
        o, lp, fb = by["rankops"], by["loop"], by["fbgemm"]  # noqa: E741
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {o['ms']:.2f} | {lp['ms']:.2f} | "
                     f"{fb['ms']:.2f} | {o['gbps']:.1f} | {lp['ms'] / o['ms']:.2f}x | {fb['ms'] / o['ms']:.2f}x |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's whole grid")
    ap.add_argument("--quick", action="store_true", help="one small case")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--cpu-time", action="store_true", help="one thread, process CPU time (busy machines)")
    ap.add_argument("--fwd-only", action="store_true", help="skip forward+backward+update")
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        torch.set_num_threads(1)
        CLOCK = time.process_time
    if args.quick:
        grid = [(100_000, 16, 1, 4096)]
    elif args.full:
        grid = [(R, D, L, B) for R in (100_000, 1_000_000) for D in (16, 64, 128) for L in (1, 20)
                for B in (4096, 16384)]
    else:
        grid = [(100_000, D, L, 4096) for D in (16, 64, 128) for L in (1, 20)]
    rows = []
    for R, D, L, B in grid:
        r = bench_case(R, D, L, B, args.rounds, fwd_only=args.fwd_only)
        rows += r
        for x in r:
            print(f"R={R} D={D} L={L} B={B} {x['mode']:24s} {x['provider']:8s} {x['ms']:8.2f} ms "
                  f"[{x['p20']:.2f}, {x['p80']:.2f}]  {x['gbps']:6.1f} GB/s", flush=True)
    flags = " ".join(a for a, on in (("--full", args.full), ("--quick", args.quick), ("--cpu-time", args.cpu_time),
                                        ("--fwd-only", args.fwd_only)) if on)
    note = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{'process CPU time' if args.cpu_time else 'wall time'}; 26 tables, fp32, sum pooling, uniform ids; "
            f"median of {args.rounds} interleaved rounds; command: python -m bench.embedding_bag {flags}")
    suffix = ("-cputime" if args.cpu_time else "") + ("-fwd" if args.fwd_only else "")
    print(*save(rows, args.out, note, suffix), sep="\n")


if __name__ == "__main__":
    main()
