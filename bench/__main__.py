"""python -m bench <name> [<name> ...] | all  [options]   (see bench/README.md)"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch

from bench import registered
from bench.common import DTYPES, RESULTS, Bench


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="rankops microbenchmarks")
    p.add_argument("names", nargs="+", help=f"benchmarks to run, or 'all' ({', '.join(registered())})")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda when a GPU is visible, else cpu")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["fp32"], help="default fp32")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke subset; writes under bench/results/tmp/ unless --out is given")
    p.add_argument("--full", action="store_true", help="the whole grid even on CPU (slow on few cores)")
    p.add_argument("--cases", nargs="+", default=[], metavar="KEY=V[,V]",
                   help="run only matching cases, e.g. --cases op=fm_interaction B=4096 D=16,64 mode=fwd")
    p.add_argument("--providers", nargs="+", default=None, help="run only these providers, e.g. eager cpp")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of samples per provider and case (default 0.5 on CPU, 0.2 on GPU)")
    p.add_argument("--out", default=None, help=f"output folder (default {RESULTS.relative_to(RESULTS.parents[1])}/)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="rankops.keep_freed_memory() first: malloc reuses freed blocks (every provider alike)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    names = registered() if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in registered()]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; registered: {registered()}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no GPU is visible to torch", file=sys.stderr)
        return 2
    args.dtypes = [DTYPES[d] for d in args.dtype]
    if args.keep_freed_memory:
        import rankops

        if not rankops.keep_freed_memory():
            print("--keep-freed-memory: no glibc malloc to tune here", file=sys.stderr)
            return 2
    out = args.out if args.out is not None else (RESULTS / "tmp" if args.quick else None)
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        run_name = name if args.dtype == ["fp32"] else f"{name}-{'-'.join(args.dtype)}"
        t0 = time.perf_counter()
        bench = Bench(run_name, args.device, out_dir=out, min_time=args.min_time, cases=args.cases,
                      providers=args.providers, quick=args.quick, full=args.full)
        print(f"[{name}] {bench.tag}: measured memory bandwidth {bench.bandwidth:.1f} GB/s", flush=True)
        ran = module.run(bench, args)
        paths = ran if getattr(module, "OWN_RESULTS", False) else bench.save()  # learning writes its own tables
        print(f"[{name}] {len(bench.rows)} rows in {time.perf_counter() - t0:.0f} s -> "
              + ", ".join(str(p) for p in paths.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
