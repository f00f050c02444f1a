#!/usr/bin/env python
"""GPU-readiness report: compile every kernel for Hopper without a GPU and show its resources.

Triton: every ``rankops/ops/<family>/triton.py`` that defines ``aot_specs()`` lists the (kernel,
config) pairs its launchers use at the benchmark shapes; each is compiled ahead of time for sm_90a
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``), and the PTX is run through
Triton's own ``ptxas -v`` (with the flags Triton uses) for registers and spills, cross-checked
against ``cuobjdump --dump-resource-usage`` of the cubin Triton built; shared memory is Triton's
(dynamic) figure from the compiled kernel's metadata.
CUDA: every ``csrc/cuda/*.cu`` is compiled with
``nvcc -std=c++17 -O3 -I csrc -gencode=arch=compute_90,code=sm_90 -Xptxas -v -c`` and the ptxas
lines are parsed per kernel (skipped, with a notice, when nvcc is absent).
For Triton kernels (whose warps per program are known) the table also estimates the resident
warps per SM that the registers and shared memory allow on sm_90.

Exit status: 2 if any compile failed, else 1 if any kernel spills, else 0.

    python scripts/gpu_report.py [--json report.json] [--family interaction] [--kernel NAME]
                                 [--limit N] [--no-cuda] [--no-triton] [--jobs N]
"""

from __future__ import annotations

# Ahead-of-time compilation needs Triton's real compiler, not the interpreter: drop the flag
# before anything imports triton (the test suite sets it; our worker processes inherit this).
import os

os.environ.pop("TRITON_INTERPRET", None)

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TRITON_ARCH = "sm_90a"
CUDA_GENCODE = "-gencode=arch=compute_90,code=sm_90"

# ---------------------------------------------------------------------------------------------
# ptxas -v output

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> list[dict]:
    """Per-kernel resources from ``ptxas -v`` output (also as printed by ``nvcc -Xptxas -v``).

    Returns one dict per entry function, in order: name, arch, registers, smem (static bytes),
    stack (frame bytes), spill_stores, spill_loads (bytes). A non-inlined device function's
    "Function properties" block has no entry of its own; its spills are added to the entry being
    compiled, since they cost that kernel.
    """
    kernels: dict[str, dict] = {}
    current = None  # the entry function being compiled
    props = None  # whose "Function properties" block we are in
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = kernels.setdefault(m.group(1), dict(
                name=m.group(1), arch=m.group(2), registers=0, smem=0, stack=0, spill_stores=0, spill_loads=0))
            continue
        m = _PROPS.search(line)
        if m:
            props = m.group(1)
            continue
        m = _FRAME.search(line)
        if m and current is not None:
            frame, stores, loads = map(int, m.groups())
            if props == current["name"]:
                current["stack"] = frame
            current["spill_stores"] += stores
            current["spill_loads"] += loads
            continue
        m = _USED.search(line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            current["smem"] = int(s.group(1)) if s else 0
    return list(kernels.values())


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool or not names:
        return {}
    try:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = out.splitlines()
    return dict(zip(names, lines)) if len(lines) == len(names) else {}


# ---------------------------------------------------------------------------------------------
# Triton


def discover_families(root: str = ROOT) -> list[tuple[str, str]]:
    """(family, module) for every rankops/ops/<family>/triton.py that defines aot_specs."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, "rankops", "ops", "*", "triton.py"))):
        with open(path) as f:
            if not re.search(r"^def aot_specs\(", f.read(), re.M):
                continue
        family = os.path.basename(os.path.dirname(path))
        found.append((family, f"rankops.ops.{family}.triton"))
    return found


def _triton_tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else (shutil.which(name) or name)


# The flags Triton's own make_cubin passes to ptxas (triton/backends/nvidia/compiler.py, 3.8):
# rerunning ptxas on the PTX with them reproduces the cubin Triton built, plus its -v report.
TRITON_PTXAS_FLAGS = ["-lineinfo", "--regAllocOptLevel=2"]
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cubin_resources(cubin: str, cuobjdump: str) -> dict | None:
    """REG / STACK / LOCAL of the (single) kernel in a cubin, from cuobjdump --dump-resource-usage."""
    run = subprocess.run([cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True)
    m = _RESOURCES.search(run.stdout)
    return dict(zip(("registers", "stack", "shared", "local"), map(int, m.groups()))) if m else None


def _compile_spec(spec: dict, tools: dict, tmp: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    src = triton.compiler.ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"],
                                    attrs=spec.get("attrs"))
    options = {"num_warps": spec.get("num_warps", 4), "num_stages": spec.get("num_stages", 3)}
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    stem = os.path.join(tmp, f"{compiled.metadata.name}_{compiled.metadata.hash[:16]}")
    with open(stem + ".ptx", "w") as f:
        f.write(compiled.asm["ptx"])
    with open(stem + ".triton.cubin", "wb") as f:
        f.write(compiled.asm["cubin"])
    run = subprocess.run([tools["ptxas"], *TRITON_PTXAS_FLAGS, "-v", f"--gpu-name={TRITON_ARCH}", stem + ".ptx",
                          "-o", stem + ".cubin"], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed: {run.stderr.strip()[-2000:]}")
    parsed = parse_ptxas(run.stdout + run.stderr)
    if not parsed:
        raise RuntimeError(f"no ptxas resource lines in: {(run.stdout + run.stderr)[-500:]}")
    k = parsed[0]
    row = dict(registers=k["registers"], smem=int(compiled.metadata.shared) + k["smem"], stack=k["stack"],
               spill_stores=k["spill_stores"], spill_loads=k["spill_loads"], arch=TRITON_ARCH)
    # Cross-check with the cubin Triton itself built (what would run): its register count wins.
    res = cubin_resources(stem + ".triton.cubin", tools["cuobjdump"])
    if res is not None:
        if res["registers"] != row["registers"]:
            row["note"] = f"ptxas -v said {row['registers']} registers"
        row["registers"] = res["registers"]
        row["stack"] = max(row["stack"], res["stack"])
    return row


def triton_worker(family: str, module: str, part: int, parts: int, kernel: str | None, limit: int | None) -> list[dict]:
    """Compile this worker's share (every parts-th spec) of one family's aot_specs()."""
    os.environ.pop("TRITON_INTERPRET", None)
    import importlib

    rows = []
    try:
        specs = importlib.import_module(module).aot_specs()
    except Exception:  # a family whose module does not import is a failed compile of all its kernels
        return [dict(source="triton", family=family, kernel="aot_specs()", config="", ok=False,
                     error=traceback.format_exc(limit=3))] if part == 0 else []
    if kernel:
        specs = [s for s in specs if kernel in s["kernel"]]
    if limit is not None:
        specs = specs[:limit]
    tools = dict(ptxas=_triton_tool("ptxas"), cuobjdump=_triton_tool("cuobjdump"))
    with tempfile.TemporaryDirectory(prefix="gpu_report_") as tmp:
        for spec in specs[part::parts]:
            row = dict(source="triton", family=family, kernel=spec["kernel"], config=spec.get("config", ""),
                       num_warps=spec.get("num_warps", 4))
            t0 = time.perf_counter()
            try:
                row.update(_compile_spec(spec, tools, tmp), ok=True)
                row["warps_per_sm"] = occupancy(row["registers"], row["smem"], row["num_warps"])
            except Exception as e:
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[-1500:]}")
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# CUDA


def find_nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)


def cuda_compile(nvcc: str, source: str, root: str = ROOT) -> list[dict]:
    family = os.path.splitext(os.path.basename(source))[0]
    with tempfile.TemporaryDirectory(prefix="gpu_report_") as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", "-I", os.path.join(root, "csrc"), CUDA_GENCODE, "-Xptxas", "-v",
               "-c", source, "-o", os.path.join(tmp, family + ".o")]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        seconds = round(time.perf_counter() - t0, 2)
    rel = os.path.relpath(source, root)
    if run.returncode != 0:
        return [dict(source="cuda", family=family, kernel=rel, config="", ok=False, seconds=seconds,
                     error=(run.stderr or run.stdout).strip()[-2000:])]
    kernels = parse_ptxas(run.stdout + "\n" + run.stderr)
    names = _demangle([k["name"] for k in kernels])
    rows = []
    for k in kernels:
        rows.append(dict(source="cuda", family=family, kernel=names.get(k["name"], k["name"]), config=k["arch"],
                         registers=k["registers"], smem=k["smem"], stack=k["stack"],
                         spill_stores=k["spill_stores"], spill_loads=k["spill_loads"], arch=k["arch"],
                         ok=True, seconds=seconds))
    if not rows:  # compiled, but no kernels in it (a stub): say so rather than print nothing
        rows.append(dict(source="cuda", family=family, kernel=f"{rel}: no kernels", config="", ok=True,
                         registers=None, smem=None, stack=None, spill_stores=0, spill_loads=0, seconds=seconds))
    return rows


# ---------------------------------------------------------------------------------------------
# report


# Hopper (sm_90) per-SM limits, for the occupancy estimate.
SM90 = dict(regs=65536, warps=64, blocks=32, smem=233472, smem_reserved=1024)


def occupancy(registers: int | None, smem: int | None, num_warps: int | None) -> int | None:
    """Resident warps per SM (of 64) that registers and shared memory allow: a rough guide for
    memory-bound kernels, which want many warps (or many bytes in flight) per SM."""
    if not registers or num_warps is None or smem is None:
        return None
    per_warp = -(-registers // 8) * 8 * 32  # registers are allocated per warp, 8 per thread at a time
    by_regs = (SM90["regs"] // per_warp) // num_warps
    by_smem = SM90["smem"] // (smem + SM90["smem_reserved"])
    blocks = min(by_regs, by_smem, SM90["blocks"], SM90["warps"] // num_warps)
    return blocks * num_warps


def spills(row: dict) -> int:
    return (row.get("spill_stores") or 0) + (row.get("spill_loads") or 0)


def format_table(rows: list[dict]) -> str:
    head = ("source", "family", "kernel", "config", "regs", "smem", "warps/SM", "spill st/ld", "")
    body = []
    for r in rows:
        if not r.get("ok"):
            body.append((r["source"], r["family"], r["kernel"], r.get("config", ""), "-", "-", "-", "-",
                         "COMPILE FAILED"))
            continue
        kernel = r["kernel"] if len(r["kernel"]) <= 60 else r["kernel"][:57] + "..."
        body.append((r["source"], r["family"], kernel, r.get("config", ""),
                     "-" if r.get("registers") is None else str(r["registers"]),
                     "-" if r.get("smem") is None else str(r["smem"]),
                     "-" if r.get("warps_per_sm") is None else str(r["warps_per_sm"]),
                     f"{r.get('spill_stores') or 0}/{r.get('spill_loads') or 0}",
                     "SPILLS" if spills(r) else r.get("note", "")))
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    fmt = lambda cols: "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the table (a list of rows) as JSON")
    ap.add_argument("--family", action="append", help="only these op families (repeatable)")
    ap.add_argument("--kernel", help="only Triton kernels whose name contains this")
    ap.add_argument("--limit", type=int, help="at most this many Triton specs per family")
    ap.add_argument("--no-cuda", action="store_true", help="skip the CUDA sources")
    ap.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    ap.add_argument("--jobs", type=int, default=max(1, min(os.cpu_count() or 1, 8)), help="worker processes")
    ap.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    notices = []
    rows: list[dict] = []

    families = [] if args.no_triton else discover_families(args.root)
    if args.family:
        families = [f for f in families if f[0] in args.family]
    sources = [] if args.no_cuda else sorted(glob.glob(os.path.join(args.root, "csrc", "cuda", "*.cu")))
    if args.family:
        sources = [s for s in sources if os.path.splitext(os.path.basename(s))[0] in args.family]
    nvcc = find_nvcc() if sources else None
    if sources and nvcc is None:
        notices.append("nvcc not found (PATH, /usr/local/cuda/bin): CUDA sources skipped")
        sources = []

    jobs = max(1, args.jobs)
    # spawn, not fork: the workers import torch and triton themselves, cleanly.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool, \
            cf.ThreadPoolExecutor(max_workers=jobs) as threads:
        futs = [pool.submit(triton_worker, fam, mod, p, jobs, args.kernel, args.limit)
                for fam, mod in families for p in range(jobs)]
        futs += [threads.submit(cuda_compile, nvcc, s, args.root) for s in sources]
        for fut in futs:  # in submission order: a stable table
            try:
                rows.extend(fut.result())
            except Exception as e:  # a crashed worker
                rows.append(dict(source="?", family="?", kernel="worker", config="", ok=False, error=repr(e)))
    rows.sort(key=lambda r: (r["source"] != "triton", r["family"], r["kernel"], r.get("config", "")))

    print(format_table(rows))
    for r in rows:
        if not r.get("ok"):
            print(f"\nFAILED {r['source']} {r['family']} {r['kernel']} {r.get('config', '')}:\n{r.get('error', '')}")
    for n in notices:
        print(f"notice: {n}")
    failed = sum(not r.get("ok") for r in rows)
    spilling = sum(1 for r in rows if r.get("ok") and spills(r))
    regs = [r["registers"] for r in rows if r.get("ok") and r.get("registers")]
    n_tri = sum(r["source"] == "triton" for r in rows)
    status = 2 if failed else 1 if spilling else 0
    print(f"gpu_report: {len(rows)} kernels ({n_tri} triton {TRITON_ARCH}, {len(rows) - n_tri} cuda sm_90), "
          f"max registers {max(regs, default=0)}, {spilling} spilling, {failed} failed to compile, "
          f"{time.perf_counter() - t0:.0f} s: {['OK', 'SPILLS', 'COMPILE FAILED'][status]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, notices=notices, status=status), f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
