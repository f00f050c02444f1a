"""Embedding lookups from tables on 4 KiB pages against the same tables on transparent huge pages
(how rankops.nn.EmbeddingBagCollection allocates its CPU tables: rankops_C::empty_hugepage).

26 tables of 1M rows, D in {16, 64}, one id per bag (every lookup a random row: the TLB-bound
case), B=4096, fp32, sum. Providers, each pair reading the same values from two buffers:
  eager / eager-huge   a loop of F.embedding_bag per table
  cpp / cpp-huge       rankops.batched_embedding_bag
CPU only (`python -m bench embedding_pages`); a GPU run skips it.
"""

from __future__ import annotations

import torch

import rankops
from bench.embedding_bag import T, loop_forward

R, B = 1_000_000, 4096


def run(bench, args) -> None:
    if bench.device.type != "cpu":
        bench.note("CPU only: huge pages are a host-memory matter.")
        return
    from rankops import backend

    if backend.extension() is None:  # (importing it registers rankops_C::empty_hugepage)
        bench.note("skipped: rankops._C is not built")
        return
    bench.baselines = ("eager", "compile", "eager-huge")
    bench.note("Same values in two buffers: torch.empty (4 KiB pages) and rankops_C::empty_hugepage "
               "(2 MiB-aligned, madvise(MADV_HUGEPAGE)); 26 tables x 1M rows, L=1, B=4096.")
    gen = torch.Generator().manual_seed(0)
    for c in bench.grid(D=[16, 64], mode=["fwd"]):
        D = c["D"]
        small = torch.empty(T * R, D).uniform_(-0.01, 0.01, generator=gen)
        huge = torch.ops.rankops_C.empty_hugepage([T * R, D], torch.float32).copy_(small)
        toff = torch.arange(0, (T + 1) * R, R)
        idx = torch.randint(0, R, (T * B,), generator=gen)
        off = torch.arange(0, T * B + 1)

        def loop(w):
            return loop_forward([w[t * R:(t + 1) * R] for t in range(T)], B, 1)

        def ours(w):
            def fn(idx, off):
                with rankops.use_backend("cpp"):
                    return rankops.batched_embedding_bag(w, toff, idx, off).view(B, -1)
            return fn

        provs = {"eager": loop(small), "eager-huge": loop(huge), "cpp": ours(small), "cpp-huge": ours(huge)}
        bench.run(op="batched_embedding_bag", case=dict(T=T, R=R, D=D, L=1, B=B), mode="fwd", dtype=torch.float32,
                  inputs=(idx, off), providers=provs, bytes=T * B * (4 * D + 8) + B * T * D * 4)
        del small, huge
