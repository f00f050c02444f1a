"""Table-batched embedding bags: rankops against a loop of F.embedding_bag per table (eager and
torch.compile) and against FBGEMM's table-batched embedding bags (TBE), side by side in one run.

Grid (issue #3): 26 tables of R in {100k, 1M} rows, D in {16, 64, 128}, pooling L in {1, 20} ids
per bag (exactly L; one-hot when L=1), B in {4096, 16384}; fp32 weights, sum pooling, int64 ids
drawn uniformly. CPU default: R=100k, B=4096 (2-core machines); `--full` (and any GPU run) the whole
grid (1M-row tables at D=128 are 13.3 GB, held once: every provider reads the same buffer);
`--quick`: R=100k, D=16, L=1, B=4096.

Modes and providers (all share one weight buffer, so none gets a luckier memory placement):
  fwd    eager    26 x F.embedding_bag + cat             -> [B, 26 D]
         compile  torch.compile of that loop
         fbgemm   SplitTableBatchedEmbeddingBagsCodegen (CPU: fbgemm-gpu-cpu; GPU: fbgemm-gpu if
                  installed), its weights the same buffer (preallocated_host_buffers)
         cpp/...  rankops.batched_embedding_bag, one call
         floor, floor-sorted  (CPU, limits, not ops) the time to read the looked-up rows and
                  nothing else, in the given and in sorted order (bench/gather_floor.py): the
                  report divides every provider's time by the faster of them
  step   forward + backward + row-wise Adagrad on the touched rows (lr 0.01, eps 1e-8):
         eager    the loop with sparse=True, then per table: coalesce the sparse grad, state[r] +=
                  mean(g_r^2), w[r] -= lr g_r / (sqrt(state[r]) + eps)  (torch has no row-wise Adagrad)
         compile  torch.compile of that step (graph breaks where it must)
         fbgemm   EXACT_ROWWISE_ADAGRAD, the update fused into its backward
         cpp/...  rankops.fused_batched_embedding_bag, the update fused into its backward
Bytes (GB/s = bytes / median time; % bw against the measured copy bandwidth):
  fwd:  nnz (4 D + 8) ids and rows read, nnz' offsets, B 26 D 4 output written
  step: fwd + grad_out read (B 26 D 4) + each unique row read and written (2 U 4 D) + its row-wise
        state read and written (2 U 4)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import rankops
from bench import gather_floor
from bench.common import providers
from rankops.ops.embedding_bag import FusedOptimizer, fused_batched_embedding_bag

T = 26
LR, EPS = 0.01, 1e-8


def fbgemm_tbe(weights: torch.Tensor, R: int, D: int, optimizer: str | None):
    """FBGEMM's TBE over ``weights`` ([T*R, D], shared); None when fbgemm_gpu is not installed."""
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (ComputeDevice,
                                                                            SplitTableBatchedEmbeddingBagsCodegen)
    except ImportError:
        return None
    opt = EmbOptimType.EXACT_ROWWISE_ADAGRAD if optimizer == "rowwise_adagrad" else EmbOptimType.EXACT_SGD
    cuda = weights.is_cuda
    loc = EmbeddingLocation.DEVICE if cuda else EmbeddingLocation.HOST
    dev = ComputeDevice.CUDA if cuda else ComputeDevice.CPU
    kw = {} if cuda else {"preallocated_host_buffers": {"weights": weights.view(-1)}}
    tbe = SplitTableBatchedEmbeddingBagsCodegen([(R, D, loc, dev)] * T, optimizer=opt, learning_rate=LR, eps=EPS,
                                                pooling_mode=PoolingMode.SUM, **kw)
    if cuda:  # device weights are its own parameter: point it at the shared buffer
        tbe.weights_dev = torch.nn.Parameter(weights.view(-1), requires_grad=optimizer is None)
    return tbe


class Tables:
    """One [T*R, D] buffer for every provider of the cases with this (R, D), and its views."""

    def __init__(self, R: int, D: int, device: torch.device):
        self.R, self.D = R, D
        self.weights = torch.empty(T * R, D, device=device).uniform_(-0.01, 0.01)
        self.table_offsets = torch.arange(0, (T + 1) * R, R, device=device)
        self.views = [self.weights[t * R:(t + 1) * R] for t in range(T)]
        self.leaves = [v.detach().requires_grad_() for v in self.views]  # same memory, for the eager step
        self.state = torch.zeros(T * R, device=device)  # rankops' row-wise Adagrad state
        self.leaf_states = [torch.zeros(R, device=device) for _ in range(T)]


def loop_forward(views: list[torch.Tensor], B: int, L: int, sparse: bool = False):
    """The eager baseline: one F.embedding_bag per table (``views``: the tables), then cat."""
    def fn(idx, off, *_):
        o = off[:B + 1]  # every table's bags have the same layout (exactly L ids each)
        return torch.cat([F.embedding_bag(idx[t * B * L:(t + 1) * B * L], views[t], o, mode="sum",  # default: mean
                                          include_last_offset=True, sparse=sparse) for t in range(T)], 1)
    return fn


def loop_step(tables: Tables, B: int, L: int):
    fwd = loop_forward(tables.leaves, B, L, sparse=True)

    def fn(idx, off, grad):
        fwd(idx, off).backward(grad)
        with torch.no_grad():
            for w, s in zip(tables.leaves, tables.leaf_states):
                g = w.grad.coalesce()
                rows, vals = g.indices()[0], g.values()
                s.index_add_(0, rows, vals.square().mean(1))
                w.index_add_(0, rows, vals * (-LR / (s[rows].sqrt() + EPS))[:, None])
                w.grad = None
    return fn


def _too_big(nbytes: int):
    def fn(*_):
        raise MemoryError(f"skipped: its sparse gradient needs about {nbytes / 2**30:.1f} GiB more than is free")
    return fn


def cost(mode: str, idx: torch.Tensor, B: int, L: int, D: int) -> int:
    nnz = T * B * L
    fwd = nnz * (4 * D + idx.element_size()) + (T * B + 1) * 8 + B * T * D * 4
    if mode == "fwd":
        return fwd
    U = sum(int(torch.unique(idx[t * B * L:(t + 1) * B * L]).numel()) for t in range(T))
    return fwd + B * T * D * 4 + 2 * U * D * 4 + 2 * U * 4


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def run(bench, args) -> None:
    bench.baselines = ("eager", "compile", "fbgemm")
    bench.limits = ("floor", "floor-sorted")
    floors = bench.provider_filter is None or any(p in bench.provider_filter for p in bench.limits)
    dev = bench.device
    if bench.quick:
        Rs, Ds, Ls, Bs = [100_000], [16], [1], [4096]
    elif dev.type == "cpu" and not bench.full:
        Rs, Ds, Ls, Bs = [100_000], [16, 64, 128], [1, 20], [4096]
        bench.note("CPU default grid: R=100k rows, B=4096 (2-core machines); `--full` adds R=1M and B=16384.")
    else:
        Rs, Ds, Ls, Bs = [100_000, 1_000_000], [16, 64, 128], [1, 20], [4096, 16384]
    bench.note(f"{T} tables, fp32, sum pooling, exactly L int64 ids per bag drawn uniformly; every provider reads "
               f"the same weight buffer; step = forward + backward + row-wise Adagrad (lr {LR}, eps {EPS}).")
    gen = torch.Generator().manual_seed(0)
    tables = None
    for c in bench.grid(R=Rs, D=Ds, L=Ls, B=Bs, mode=("fwd", "step")):
        R, D, L, B, mode = c["R"], c["D"], c["L"], c["B"], c["mode"]
        if not bench.wants(op="batched_embedding_bag", mode=mode, dtype="fp32", T=T, R=R, D=D, L=L, B=B):
            continue
        if tables is None or (tables.R, tables.D) != (R, D):
            tables = None  # free the previous buffer first
            tables = Tables(R, D, dev)
        idx = torch.randint(0, R, (T * B * L,), generator=gen).to(dev)
        off = torch.arange(0, T * B * L + 1, L, device=dev)
        if mode == "fwd":
            inputs = (idx, off)
            tbe = fbgemm_tbe(tables.weights, R, D, None)

            def ours(idx, off, tables=tables, B=B):
                return rankops.batched_embedding_bag(tables.weights, tables.table_offsets, idx, off).view(B, -1)

            ref = loop_forward(tables.views, B, L)
            fb = (lambda idx, off, tbe=tbe: tbe(idx, off)) if tbe is not None else None
        else:
            inputs = (idx, off, torch.randn(B, T * D, generator=gen).to(dev))
            tbe = fbgemm_tbe(tables.weights, R, D, "rowwise_adagrad")
            opt = FusedOptimizer("rowwise_adagrad", lr=LR, eps=EPS)

            def ours(idx, off, grad, tables=tables, B=B, opt=opt):
                out = fused_batched_embedding_bag(tables.weights, tables.state, tables.table_offsets, idx, off,
                                                  optimizer=opt)
                out.view(B, -1).backward(grad)

            ref = loop_step(tables, B, L)
            fb = (lambda idx, off, grad, tbe=tbe: tbe(idx, off).backward(grad)) if tbe is not None else None
        provs = providers(reference=ref, op=ours, device=dev)
        if fb is not None:
            provs["fbgemm"] = fb
        if mode == "fwd" and floors and gather_floor.supported(tables.weights):
            provs.update(gather_floor.providers(tables.weights, tables.table_offsets, idx, off, B, gen))
        # The eager step's sparse gradient holds a D-wide row per lookup, twice over while it is
        # coalesced; where that does not fit beside the tables, the eager and compile rows say so.
        sparse_bytes = 2 * T * B * L * (D * 4 + 8)
        if mode == "step" and sparse_bytes > 0.8 * available_bytes(dev):
            for p in ("eager", "compile"):
                provs[p] = _too_big(sparse_bytes)
        bench.run(op="batched_embedding_bag", case=dict(T=T, R=R, D=D, L=L, B=B), mode=mode, dtype=torch.float32,
                  inputs=inputs, providers=provs, bytes=cost(mode, idx, B, L, D))
        del tbe
