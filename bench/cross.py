"""Cross-layer benchmark (DCN / DCN-V2): rankops.nn.CrossNet against the eager PyTorch formula and
its torch.compile, side by side in one run.

    python -m bench.cross                  # B=4096, fp32, CPU: N=429 x 3 layers and N=1024 x 3 layers
    python -m bench.cross --reps 20

Providers:
  eager    the layers as TorchRec writes them, ``x = x0 * F.linear(x, W, b) + x`` (low rank: two
           linears; v1: ``x0 * (x @ w)[:, None] + b + x``), under autograd
  compile  torch.compile of the same module (dynamic=False)
  cpp      rankops.nn.CrossNet on the cpp backend, same parameters

Rows: median / min time over the reps after a warm-up, GFLOP/s (2*B*N*N per full-rank layer
forward, 2*B*N*2r low rank; x3 for forward+backward), and the peak of the torch allocator's live
bytes during one step (torch.profiler memory timeline, see bench/cin.py).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.cin import machine, peak_alloc_bytes, rel_diff, step, time_interleaved, write


class EagerCross(nn.Module):
    """The plain PyTorch cross stack over a rankops CrossNet's parameters."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x0):
        n, x = self.net, x0
        for l in range(n.num_layers):
            if n.variant == "v2":
                x = x0 * F.linear(x, n.weight[l], n.bias[l]) + x
            elif n.variant == "lowrank":
                x = x0 * F.linear(F.linear(x, n.v[l]), n.u[l], n.bias[l]) + x
            else:
                x = x0 * (x @ n.w[l])[:, None] + n.bias[l] + x
        return x


class Pinned(nn.Module):
    def __init__(self, net, backend):
        super().__init__()
        self.net, self.backend = net, backend

    def forward(self, x0):
        import rankops

        with rankops.use_backend(self.backend):
            return self.net(x0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--providers", nargs="+", default=["eager", "compile", "cpp"])
    ap.add_argument("--modes", nargs="+", default=["fwd+bwd", "fwd"])
    args = ap.parse_args()
    from rankops.nn import CrossNet

    B = args.B
    cases = [("v2", 429, 3, None), ("v2", 1024, 3, None), ("lowrank", 429, 3, 107), ("v1", 429, 3, None)]
    rows = []
    for variant, N, L, r in cases:
        torch.manual_seed(0)
        net = CrossNet(N, L, variant=variant, low_rank=r)
        with torch.no_grad():
            for p in net.parameters():  # non-zero biases: the epilogue's bias path is timed too
                p.add_(torch.randn_like(p) * 0.01)
        per_layer = {"v2": 2 * B * N * N, "lowrank": 2 * B * N * 2 * (r or 1), "v1": 4 * B * N}[variant]
        for mode in args.modes:
            x0 = torch.randn(B, N, requires_grad=True)
            fns, first, outs, alloc = {}, {}, {}, {}
            for prov in args.providers:
                model = {"eager": lambda: EagerCross(net), "compile": lambda: torch.compile(EagerCross(net), dynamic=False),
                         "cpp": lambda: Pinned(net, "cpp")}[prov]()
                fns[prov] = step(model, (x0,), mode)
                t0 = time.perf_counter()
                outs[prov] = fns[prov]()
                first[prov] = time.perf_counter() - t0
                fns[prov]()
                alloc[prov] = peak_alloc_bytes(fns[prov])
            times = time_interleaved(fns, args.reps)
            for prov in args.providers:
                med, mn = times[prov]
                flops = per_layer * L * (3 if mode == "fwd+bwd" else 1)
                row = dict(op=f"cross_{variant}", case=f"B={B} N={N} layers={L}" + (f" r={r}" if r else ""),
                           dtype="fp32", mode=mode, provider=prov, median_ms=round(med * 1e3, 2),
                           min_ms=round(mn * 1e3, 2), first_call_s=round(first[prov], 1),
                           gflops=round(flops / med / 1e9, 1), peak_alloc_MiB=round(alloc[prov] / 2**20, 1))
                if prov != "eager" and "eager" in times:
                    row["speedup_vs_eager"] = round(times["eager"][0] / med, 2)
                    row["max_rel_diff_vs_eager"] = f"{rel_diff(outs[prov], outs['eager']):.1e}"
                rows.append(row)
                print(row, flush=True)
    notes = [f"Machine: {machine()}.", "Ratios are within this one run; the machine is shared, so absolute "
             "times are noisy. Timed: median of the reps after warm-up calls (compile time excluded); the providers "
             "take turns call by call."]
    write(f"cross-cpu-B{B}", rows, notes)


if __name__ == "__main__":
    main()
