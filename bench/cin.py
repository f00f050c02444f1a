"""CIN (xDeepFM) benchmark: rankops against DeepCTR-Torch's einsum + Conv1d CIN, eager and compiled.

    python -m bench.cin                    # M=39, D=16, layers 200-200-200, B=4096, fp32, CPU
    python -m bench.cin --B 1024 --reps 3  # quicker

For each provider and mode (fwd, fwd+bwd) it records the median / min time and the peak memory,
side by side in one run, to bench/results/cin-<device>.csv and .md. Providers:
  eager    DeepCTR-Torch's CIN (einsum 'bhd,bmd->bhmd', reshape, Conv1d(H*M, Hn, 1), relu,
           split_half), re-implemented here from its source (the library is not a dependency)
  compile  torch.compile of that module
  cpp      rankops.nn.CIN with the cpp backend, loaded from the eager module's state dict

Peak memory, two independent measures:
  alloc    the torch allocator's live bytes, from torch.profiler's memory timeline (CREATE /
           DESTROY of every tensor storage while the step runs): the peak above what was live
           before the step, gradients included. It does not see the cpp kernel's per-thread
           std::vector scratch (about 1 MB a thread at these sizes).
  rss      the process's resident-memory high-water mark (VmHWM, reset through
           /proc/self/clear_refs before the step) minus the resident set before it, measured in
           a fresh subprocess per provider so no allocator cache from another provider hides a
           peak; it sees everything, scratch and compile workspaces included.

Helpers here (timing, memory) are shared with bench/cross.py. When the shared harness
(bench/common.py) lands, the timing moves onto it; the memory measures stay here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# measuring


def time_it(fn: Callable[[], object], reps: int, warmup: int = 1) -> tuple[float, float]:
    """(median, min) seconds of ``fn()`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per provider, the providers taking turns call by call: on a shared
    machine a neighbour's load then slows every provider alike instead of whichever ran during it."""
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in ts.items()}


def peak_alloc_bytes(fn: Callable[[], object]) -> int:
    """Peak live bytes of the torch CPU allocator while ``fn()`` runs, above the start."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _t, action, _key, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_rss_bytes(fn: Callable[[], object]) -> int:
    """Resident-set high-water mark during ``fn()`` above the resident set before it (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) * 1024


def in_subprocess(module: str, args: list[str]) -> dict:
    """Run ``python -m module *args`` and return the JSON it prints on its last line."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], env=os.environ.copy())
    if out.returncode:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def step(model: Callable, inputs: tuple, mode: str, grad_out: torch.Tensor | None = None) -> Callable[[], object]:
    """The timed unit: forward (no grad), or forward + backward into the inputs and parameters."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return model(*inputs)
        return run
    leaves = [t for t in inputs if t.requires_grad]
    params = list(model.parameters()) if isinstance(model, nn.Module) else []

    def run():
        out = model(*inputs)
        grads = torch.autograd.grad(out, leaves + params, grad_out if grad_out is not None else torch.ones_like(out))
        return (out.detach(), *grads)
    return run


def rel_diff(a, b, n: int | None = None) -> float:
    """max |a - b| / max |b| over the output and the gradients (the first ``n`` of them): how far a
    provider is from eager."""
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    a, b = a[:n], b[:n]
    return max(((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-30)).item()
               for x, y in zip(a, b))


def write(name: str, rows: list[dict], notes: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(RESULTS / f"{name}.csv", "w") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(k, "")) for k in keys) + "\n")
    with open(RESULTS / f"{name}.md", "w") as f:
        f.write(f"# {name}\n\n" + "\n".join(notes) + "\n\n")
        f.write("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n")
        for r in rows:
            f.write("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n")
    print((RESULTS / f"{name}.md").read_text())


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores visible, torch {torch.__version__}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------------------------
# the CIN providers


class DeepCTRCIN(nn.Module):
    """DeepCTR-Torch's CIN forward (deepctr_torch/layers/interaction.py), re-implemented."""

    def __init__(self, M, layer_size, split_half=True):
        super().__init__()
        self.layer_size, self.split_half = list(layer_size), split_half
        self.conv1ds = nn.ModuleList()
        H = M
        for i, size in enumerate(layer_size):
            self.conv1ds.append(nn.Conv1d(H * M, size, 1))
            H = size // 2 if split_half and i < len(layer_size) - 1 else size

    def forward(self, x):
        B, M, D = x.shape
        hidden, final = [x], []
        for i, size in enumerate(self.layer_size):
            z = torch.einsum("bhd,bmd->bhmd", hidden[-1], hidden[0]).reshape(B, hidden[-1].shape[1] * M, D)
            cur = torch.relu(self.conv1ds[i](z))
            if self.split_half and i != len(self.layer_size) - 1:
                nxt, direct = torch.split(cur, 2 * [size // 2], 1)
            else:
                direct, nxt = cur, cur
            final.append(direct)
            hidden.append(nxt)
        return torch.cat(final, 1).sum(-1)


def make(provider: str, B: int, M: int, D: int, sizes: list[int], dtype=torch.float32):
    torch.manual_seed(0)
    ref = DeepCTRCIN(M, sizes).to(dtype)
    x = torch.randn(B, M, D, dtype=dtype, requires_grad=True)
    if provider == "eager":
        return ref, (x,)
    if provider == "compile":
        return torch.compile(ref, dynamic=False), (x,)
    import rankops
    from rankops.nn import convert

    net = convert.cin_from_deepctr(ref.state_dict())
    backend = provider

    class Pinned(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            with rankops.use_backend(backend):
                return self.net(x)

    return Pinned(), (x,)


def child(args) -> None:
    """One provider in a fresh process: warm up, then print the RSS peak of one step as JSON."""
    model, inputs = make(args.provider, args.B, args.M, args.D, args.sizes)
    fn = step(model, inputs, args.mode)
    fn()  # warm-up: compilation, first-touch of the parameters
    print(json.dumps({"rss": peak_rss_bytes(fn)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--M", type=int, default=39)
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 200, 200])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--providers", nargs="+", default=["eager", "compile", "cpp"])
    ap.add_argument("--modes", nargs="+", default=["fwd+bwd", "fwd"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--provider", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    B, M, D, sizes = args.B, args.M, args.D, args.sizes
    # FLOPs of the forward: 2 * B*D * Hn*H*M per layer (the products and the 1x1 convolution)
    flops, H = 0, M
    for k, s in enumerate(sizes):
        flops += 2 * B * D * s * H * M
        H = s // 2 if k < len(sizes) - 1 else s
    rows, outs = [], {}
    for mode in args.modes:
        fns, first, extra = {}, {}, {}
        for prov in args.providers:
            model, inputs = make(prov, B, M, D, sizes)
            fns[prov] = step(model, inputs, mode)
            t0 = time.perf_counter()
            outs[(mode, prov)] = fns[prov]()  # warm-up (compile time excluded from the timings)
            first[prov] = time.perf_counter() - t0
            extra[prov] = dict(alloc=peak_alloc_bytes(fns[prov]), rss=in_subprocess(
                "bench.cin", ["--child", "--provider", prov, "--mode", mode, "--B", str(B), "--M", str(M), "--D", str(D),
                              "--sizes", *map(str, sizes)]))
        times = time_interleaved(fns, args.reps)
        for prov in args.providers:
            (med, mn), alloc, rss = times[prov], extra[prov]["alloc"], extra[prov]["rss"]
            f = flops * (3 if mode == "fwd+bwd" else 1)
            rows.append(dict(op="cin", case=f"B={B} M={M} D={D} layers={'-'.join(map(str, sizes))}", dtype="fp32",
                             mode=mode, provider=prov, median_ms=round(med * 1e3, 1), min_ms=round(mn * 1e3, 1),
                             first_call_s=round(first[prov], 1), gflops=round(f / med / 1e9, 1),
                             peak_alloc_MiB=round(alloc / 2**20, 1),
                             peak_rss_MiB=round(rss["rss"] / 2**20, 1) if "rss" in rss else rss.get("error")))
            print(rows[-1], flush=True)
        del fns
    # side-by-side ratios against eager, and a check that the providers agree
    notes = [f"Machine: {machine()}.", "Ratios are within this one run. FLOPs: 2*B*D*Hn*H*M per layer forward, x3 for "
             "forward+backward (gflops column).", "Timed: median of the reps after one warm-up call; the providers take turns call by call.",
             "max_rel_diff_vs_eager: max |x - x_eager| / max |x_eager| over the output and the input gradient (the "
             "parameters are laid out differently: Conv1d [Hn, H*M, 1] against [Hn, H, M])."]
    for mode in args.modes:
        base = next((r for r in rows if r["mode"] == mode and r["provider"] == "eager"), None)
        for r in rows:
            if r["mode"] != mode or base is None:
                continue
            r["speedup_vs_eager"] = round(base["median_ms"] / r["median_ms"], 2)
            r["mem_ratio_eager_over_this"] = round(base["peak_alloc_MiB"] / max(r["peak_alloc_MiB"], 1e-9), 1)
            e = outs.get((mode, "eager"))
            if e is not None and (mode, r["provider"]) in outs:
                r["max_rel_diff_vs_eager"] = f"{rel_diff(outs[(mode, r['provider'])], e, n=2):.1e}"
    write(f"cin-cpu-B{B}", rows, notes)


if __name__ == "__main__":
    main()
