"""rankops microbenchmarks: `python -m bench <name>|all` (see bench/README.md).

A benchmark is a module bench/<family>.py that defines ``run(bench, args)``; it is found by name,
nothing else registers it. The harness is bench/common.py (Bench, providers)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

NOT_BENCHMARKS = {"common", "report"}


def registered() -> list[str]:
    """Names of the benchmarks: bench/<name>.py modules that define run(bench, args)."""
    names = []
    for m in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if m.name.startswith("_") or m.name in NOT_BENCHMARKS:
            continue
        if hasattr(importlib.import_module(f"bench.{m.name}"), "run"):
            names.append(m.name)
    return sorted(names)
