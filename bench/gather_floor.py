"""The gather floor of an embedding-bag forward: the time to read the rows its lookups name and
nothing else (csrc/gather_floor.cpp). Any forward must read those rows, so a provider's time over
the floor's says how much of a further speedup is left, and a baseline already within 1.5x of the
floor cannot be beaten by 1.5x.

Two floors:
  floor         the lookups in their given order, table by table, split over the threads;
  floor-sorted  each table's ids sorted (outside the timing): neighbouring lookups share pages and
                repeated rows come back to back, the best order any kernel could choose.
Each reads with the prefetch distance (in lookups) that was fastest on the case, of 8, 16, 32 and 64.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import torch

DISTANCES = (8, 16, 32, 64)
SORTED_COPIES = 4  # the sorted floor rotates its own id sets (same distribution), as the harness rotates inputs


STALE_LOCK_S = 600  # the build takes ~30 s; a lock older than this was left by a killed build


def build_dir() -> Path:
    """This checkout's build folder for the floor's extension, one per torch and python: torch's default
    (~/.cache/torch_extensions/py311_cu130) is shared by every checkout and torch version of that
    python and CUDA, so a second torch loaded the first's build, and a build killed mid-way left a lock
    there that made every later load wait forever."""
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    d = Path(__file__).resolve().parents[1] / "build" / "bench_ext" / tag
    d.mkdir(parents=True, exist_ok=True)
    lock = d / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    return d


@functools.cache
def _ext():
    from torch.utils.cpp_extension import load

    src = Path(__file__).resolve().parent / "csrc" / "gather_floor.cpp"
    # -fopenmp: at::parallel_for is an OpenMP region compiled here (without it, one thread)
    return load(name="rankops_bench_gather_floor", sources=[str(src)], build_directory=str(build_dir()),
                extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])


def supported(weights: torch.Tensor) -> bool:
    return weights.device.type == "cpu" and weights.dtype == torch.float32 and weights.shape[1] in (16, 64, 128)


def _fastest(call, reps: int = 3) -> int:
    best = {}
    for d in DISTANCES:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call(d)
            ts.append(time.perf_counter() - t0)
        best[d] = min(ts)
    return min(best, key=best.get)


def providers(weights: torch.Tensor, table_offsets: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor,
              B: int, gen: torch.Generator) -> dict:
    """{"floor": fn(idx, off), "floor-sorted": fn(idx, off)} for a table-major lookup of T tables."""
    ext = _ext()
    starts = offsets[::B].contiguous()  # where each table's lookups begin
    counts = starts[1:] - starts[:-1]
    first_of = torch.repeat_interleave(table_offsets[:-1], counts)  # each lookup's table's first row
    rows_of = torch.repeat_interleave(table_offsets[1:] - table_offsets[:-1], counts)  # and its size

    def sort_by_table(ids):  # each table's ids sorted, tables in order: sorting global row ids does both
        return (ids + first_of).sort().values - first_of

    sorted_sets = [sort_by_table(idx)]
    for _ in range(SORTED_COPIES - 1):  # fresh ids of the same (uniform) distribution
        sorted_sets.append(sort_by_table((torch.rand(idx.shape, generator=gen, dtype=torch.float64) * rows_of).long()))
    d_given = _fastest(lambda d: ext.gather_floor(weights, table_offsets, idx, starts, d))
    d_sorted = _fastest(lambda d: ext.gather_floor(weights, table_offsets, sorted_sets[0], starts, d))
    turn = [0]

    def floor(idx, off):
        return ext.gather_floor(weights, table_offsets, idx, starts, d_given)

    def floor_sorted(idx, off):
        turn[0] += 1
        return ext.gather_floor(weights, table_offsets, sorted_sets[turn[0] % SORTED_COPIES], starts, d_sorted)

    return {"floor": floor, "floor-sorted": floor_sorted}
