"""Write auto's per-op backend table (rankops/auto_order.json) from a GPU run's benchmark csvs.

    python -m bench.auto_order RUN.csv [RUN.csv ...] [--out rankops/auto_order.json]

For every op with both a ``cuda`` and a ``triton`` row in the same (case, mode, dtype), the winner
is the backend with the lower median time in the geometric mean over those cases (fwd and fwd+bwd
alike: a training step runs both directions). Benchmark op labels that time several rankops ops
(the cross bench's ``cross_layer`` stack runs ``cross_net``) are mapped in LABEL_OPS. Ops the csvs
do not measure keep their entry in the existing table (``--out``'s, when it exists); so does every
other device type. Not a benchmark itself (no ``run``): ``python -m bench all`` does not run it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from rankops import backend

# benchmark op label -> the rankops ops whose backend its cuda / triton rows time
LABEL_OPS = {
    "cross_layer": ("cross_net", "cross_layer"),  # bench/cross.py: the full-rank stack as one op
    "cin": ("cin_layer",),
    "target_attention": ("target_attention", "jagged_target_attention"),
}
RIVALS = ("cuda", "triton")


def speedups(paths: list[Path]) -> dict[str, tuple[float, int, str]]:
    """{rankops op: (geometric mean of triton_ms / cuda_ms, cases, device tag)} over the csvs."""
    times: dict[tuple, dict[str, float]] = defaultdict(dict)
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["provider"] in RIVALS and not row.get("error") and row.get("median_ms"):
                    key = (row["op"], row["case"], row["mode"], row["dtype"], row["device"])
                    times[key][row["provider"]] = float(row["median_ms"])
    logs: dict[str, list[float]] = defaultdict(list)
    devices: dict[str, str] = {}
    for (label, _case, _mode, _dtype, device), t in times.items():
        if len(t) < 2 or min(t.values()) <= 0:
            continue
        for op in LABEL_OPS.get(label, (label,)):
            logs[op].append(math.log(t["triton"] / t["cuda"]))
            devices[op] = device
    return {op: (math.exp(sum(v) / len(v)), len(v), devices[op]) for op, v in logs.items()}


def table(found: dict[str, tuple[float, int, str]], old: dict) -> dict:
    new = json.loads(json.dumps(old))  # a copy; untouched entries stay as they were
    cuda = new.setdefault("cuda", {})
    for op, (ratio, n, device) in sorted(found.items()):
        order = ["cuda", "triton"] if ratio > 1 else ["triton", "cuda"]
        cuda[op] = {"order": order, "measured_on": device,
                    "triton_over_cuda": round(ratio, 3), "cases": n}
    return new


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.auto_order", description=__doc__.splitlines()[0])
    p.add_argument("csvs", nargs="+", type=Path, help="benchmark csvs of one GPU run")
    p.add_argument("--out", type=Path, default=Path(backend.AUTO_ORDER_FILE),
                   help="the table to update (default: the installed rankops/auto_order.json)")
    args = p.parse_args(argv)
    missing = [str(c) for c in args.csvs if not c.is_file()]
    if missing:
        print(f"python -m bench.auto_order: no such csv: {', '.join(missing)}", file=sys.stderr)
        return 2
    found = speedups(args.csvs)
    if not found:
        print("python -m bench.auto_order: no case has both a cuda and a triton time: table unchanged", file=sys.stderr)
        return 1
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    new = table(found, old)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(new, indent=2) + "\n")
    backend.load_auto_order(str(tmp))  # what auto will read must load
    tmp.replace(args.out)
    for op, (ratio, n, device) in sorted(found.items()):
        print(f"{op:26s} {'cuda' if ratio > 1 else 'triton'} first  (triton / cuda time {ratio:.2f}x over {n} "
              f"cases, {device})")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
