"""Cross layers (DCN, DCN-V2) stacked 3 deep, fwd and fwd+bwd, against the eager TorchRec formula and
its torch.compile.

    python -m bench cross                        # CPU: B=4096; N=429 and 1024 full rank, N=429 low rank and v1
    python -m bench cross --cases op=cross_layer N=429 mode=fwd+bwd

Cases (B = 4096 on CPU; on a GPU also B = 65536 with N = 432, DCN-V2's 429 padded):
  op=cross_layer           full rank, N in {429, 1024}, 3 layers: weight [3, N, N], bias [3, N]
  op=cross_net_lowrank     N = 429, r = 107 (~N/4), 3 layers: u [3, N, r], v [3, r, N]
  op=cross_net_v1          N = 429, 3 layers: w [3, N]
Providers: eager = bench.baselines.cross_stack* (x = x0 * F.linear(x, W_l, b_l) + x per layer,
TorchRec's formula, parameters unbound per layer), compile = torch.compile of it, and the rankops
backends: each stack as one op (rankops.cross_net, cross_net_lowrank, cross_net_v1); for low rank
and v1 also `cpp-layers`, the stack as one cpp layer op per layer (what CrossNet ran before).
In fwd+bwd every input is differentiated (x0 and all parameters), as in training.

flops: forward 2*B*N*N per full-rank layer, 4*B*N*r low rank, 4*B*N v1; fwd+bwd 3x that.
bytes: the fewest a fused stack must move: read x0 and the parameters, write the output (fwd);
plus read grad_out, write dx0 and the parameters' gradients (fwd+bwd).

The GEMM floor (full rank, CPU, a note in the header): eager's 3 (fwd) or 9 (fwd+bwd) matrix
products alone, into preallocated outputs, timed in turn with eager right after the case: a kernel
running the same GEMMs on the same layout cannot beat eager by more than eager / floor (cross_net
pads rows at N=429, which makes its GEMMs faster than these).
"""

from __future__ import annotations

import torch

import rankops
from bench import baselines
from bench.common import providers

L = 3
RANK = 107


def _lowrank_op(x0, u, v, bias):
    x = x0
    for uu, vv, b in zip(u.unbind(0), v.unbind(0), bias.unbind(0)):
        x = rankops.cross_layer_lowrank(x0, x, uu, vv, b)
    return x


def _v1_op(x0, w, bias):
    x = x0
    for ww, b in zip(w.unbind(0), bias.unbind(0)):
        x = rankops.cross_layer_v1(x0, x, ww, b)
    return x


OPS = {  # op: (eager reference, rankops, one op per layer or None, flops of one layer's forward / (B*N))
    "cross_layer": (baselines.cross_stack, rankops.cross_net, None, lambda N, r: 2 * N),
    "cross_net_lowrank": (baselines.cross_stack_lowrank, rankops.cross_net_lowrank, _lowrank_op, lambda N, r: 4 * r),
    "cross_net_v1": (baselines.cross_stack_v1, rankops.cross_net_v1, _v1_op, lambda N, r: 4),
}


def _on_cpp(fn):
    def run(*args):
        with rankops.use_backend("cpp"):
            return fn(*args)

    return run


def _params(op, N, r, gen):
    def rnd(*shape, scale):
        return torch.randn(*shape, generator=gen) * scale

    if op == "cross_layer":
        return [rnd(L, N, N, scale=N**-0.5), rnd(L, N, scale=0.01)]
    if op == "cross_net_lowrank":
        return [rnd(L, N, r, scale=N**-0.25), rnd(L, r, N, scale=N**-0.25), rnd(L, N, scale=0.01)]
    return [rnd(L, N, scale=N**-0.5), rnd(L, N, scale=0.01)]


def gemm_floor(x0, weight, mode: str, reps: int = 5) -> tuple[float, float]:
    """(median ms of the full-rank stack's GEMMs alone, median ms of eager), interleaved."""
    import statistics
    import time

    L, B, N = weight.shape[0], *x0.shape
    x, w = x0.detach(), weight.detach()
    g = torch.randn_like(x)
    bufs, dw = [torch.empty_like(x) for _ in range(L + 1)], torch.empty_like(w)

    def gemms():
        for l in range(L):
            torch.mm(x, w[l].T, out=bufs[l])
        if mode == "fwd+bwd":
            for l in range(L):
                torch.mm(g.T, bufs[l], out=dw[l])
                torch.mm(g, w[l], out=bufs[L])

    def eager():
        if mode == "fwd":
            with torch.no_grad():
                baselines.cross_stack(x0, weight, bias)
        else:
            out = baselines.cross_stack(x0, weight, bias)
            torch.autograd.grad(out, [t for t in (x0, weight, bias) if t.requires_grad], g)

    bias = torch.zeros(L, N, dtype=x.dtype, requires_grad=mode != "fwd")
    t = {gemms: [], eager: []}
    for f in (gemms, eager):
        f()
    for _ in range(reps):
        for f in (gemms, eager):
            t0 = time.perf_counter()
            f()
            t[f].append((time.perf_counter() - t0) * 1e3)
    return statistics.median(t[gemms]), statistics.median(t[eager])


def cases(device: str, quick: bool):
    """(op, B, N) of the grid."""
    if quick:
        return [("cross_layer", 4096, 429)]
    out = [("cross_layer", 4096, 429), ("cross_layer", 4096, 1024), ("cross_net_lowrank", 4096, 429),
           ("cross_net_v1", 4096, 429)]
    if device == "cuda":
        out += [("cross_layer", 65536, 432), ("cross_net_lowrank", 65536, 432), ("cross_net_v1", 65536, 432)]
    return out


def run(bench, args) -> None:
    dtypes = getattr(args, "dtypes", None) or [torch.float32]
    bench.note(f"{L} stacked layers per case; eager = TorchRec's formula with F.linear (bench/baselines.py); "
               "rankops: each stack as one op (cross_net, cross_net_lowrank, cross_net_v1); cpp-layers: one cpp "
               "layer op per layer.")
    gen = torch.Generator(device="cpu").manual_seed(0)
    grid = cases(bench.device.type, bench.quick)
    for c in bench.grid(dtype=dtypes, case=[f"{op}:{B}:{N}" for op, B, N in grid], mode=("fwd", "fwd+bwd")):
        op, B, N = c["case"].split(":")
        B, N = int(B), int(N)
        dtype, mode = c["dtype"], c["mode"]
        r = RANK if op == "cross_net_lowrank" else None
        grad = mode == "fwd+bwd"
        inputs = [t.to(bench.device, dtype).requires_grad_(grad)
                  for t in [torch.randn(B, N, generator=gen)] + _params(op, N, r, gen)]
        eager, fused, per_layer, layer_flops = OPS[op]
        provs = providers(reference=eager, op=fused, device=bench.device)
        if per_layer is not None and "cpp" in provs:
            provs["cpp-layers"] = _on_cpp(per_layer)
        isz = inputs[0].element_size()
        nparam = sum(t.numel() for t in inputs[1:])
        nbytes = (2 * B * N + nparam) * isz * (1 if mode == "fwd" else 2) + (B * N * isz if grad else 0)
        flops = L * B * N * layer_flops(N, r) * (1 if mode == "fwd" else 3)
        case = dict(B=B, N=N, layers=L) | (dict(r=r) if r else {})
        rows = bench.run(op=op, case=case, dtype=dtype, mode=mode, inputs=tuple(inputs), providers=provs,
                         bytes=nbytes, flops=flops)
        if rows and op == "cross_layer" and bench.device.type == "cpu":
            floor, eager_ms = gemm_floor(inputs[0], inputs[1], mode)
            bench.note(f"GEMM floor, {op} {mode} N={N}: eager's {L if mode == 'fwd' else 3 * L} matrix products "
                       f"alone (same operands, into preallocated outputs) {floor:.1f} ms vs eager {eager_ms:.1f} ms, "
                       f"in turn: {eager_ms / floor:.2f}x over eager at most for a kernel running the same GEMMs "
                       f"on the same row layout.")


if __name__ == "__main__":  # python bench/cross.py [args]: the same as python -m bench cross
    import sys

    from bench.__main__ import main

    sys.exit(main(["cross", *sys.argv[1:]]))
